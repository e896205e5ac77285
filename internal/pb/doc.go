// Package pb groups the protocol buffer definitions of the two OMEMO wire
// formats: twomemopb (OMEMO 2) and oldmemopb (legacy OMEMO, libsignal's
// WhisperTextProtocol). Run "go generate" here (or bash generate.sh) to
// regenerate the *.pb.go files after editing a .proto file.
package pb

//go:generate bash generate.sh
