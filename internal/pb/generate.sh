#!/usr/bin/env bash
# Regenerates the Go code of the OMEMO protocol buffers:
#
#	cd internal/pb && bash generate.sh     (or: go generate ./internal/pb/...)
#
# Needs protoc (Debian: protobuf-compiler). protoc-gen-go is installed at the
# version matching go.mod if it is not on PATH or in $(go env GOPATH)/bin.
set -euo pipefail

cd "$(dirname "$0")"

PROTOC_GEN_GO_VERSION=v1.36.12

gobin="$(go env GOBIN)"
if [ -z "$gobin" ]; then
	gobin="$(go env GOPATH)/bin"
fi
export PATH="$gobin:$PATH"

if ! command -v protoc-gen-go >/dev/null 2>&1; then
	go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
fi

for dir in twomemopb oldmemopb; do
	protoc --proto_path="$dir" --go_out="$dir" --go_opt=paths=source_relative "$dir"/*.proto
done
