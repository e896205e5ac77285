// Command omemo is a command-line OMEMO (XEP-0384) client built on the
// mellium plugin of mellium.im/omemo.
//
// Usage:
//
//	omemo [global flags] COMMAND [flags] [args]
//
// Global flags:
//
//	-jid JID            account
//	-password P         password (or the environment variable OMEMO_PASSWORD)
//	-addr host:port     server address (default: resolved from the JID's domain)
//	-store FILE         state file (default: one file per JID under the user's config directory)
//	-store postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAMS]
//	                    the state in a PostgreSQL database instead (also postgresql://); -store's default is
//	                    the environment variable OMEMO_STORE, a FILE or such a URL
//	-backends LIST      comma-separated backends in priority order: twomemo,oldmemo (default both, twomemo first)
//	-trust MODE         btbv | tofu | manual (default btbv)
//	-insecure-skip-verify   accept the server's TLS certificate without verification (local test servers)
//	-json               machine-readable output, one JSON object per line on stdout
//
// Commands:
//
//	send -to JID [-wait DURATION] TEXT     encrypt and send; with -wait, stay online and print replies until DURATION ends
//	send -room ROOM [-nick NICK] [-wait DURATION] TEXT
//	                                       join ROOM, encrypt for its members and send; exits once the room returned the message
//	send -to JID -file PATH [-wait DURATION]
//	send -room ROOM [-nick NICK] -file PATH [-wait DURATION]
//	                                       upload the file encrypted (XEP-0454) and send it instead of a TEXT
//	listen [-for DURATION] [-count N] [-echo]   print received messages; -echo answers each with "echo: " + text, encrypted
//	listen -room ROOM [-nick NICK] [-for DURATION] [-count N] [-echo]
//	                                       also join ROOM and print its messages; -echo answers them in the room
//	listen [-room ROOM [-nick NICK]] -download DIR [-for DURATION] [-count N] [-echo]
//	                                       also download, decrypt and verify received files into DIR
//	chat JID                               interactive: each line on stdin is sent encrypted, each received message printed
//	chat -room ROOM [-nick NICK]           interactive, in ROOM
//	room create [-members JID,JID] ROOM    create ROOM (non-anonymous, members-only, persistent; you its owner), add the members
//	room members ROOM                      the owners, admins and members of ROOM
//	devices [-jid JID]                     id, label, fingerprint, trust, backends and active flag of each device
//	trust -jid JID -fingerprint HEX -level trusted|distrusted|undecided
//	fingerprint                            own device id and fingerprint
//
// The text of send is the rest of the command line after its flags. A word
// of it that is one of send's flags (-to, --wait, -wait=5s, -h…) or a global
// flag is refused as a usage error: flags go before the text. To send any
// text exactly as given, put -- before it:
//
//	omemo -jid alice@example.org send -to bob@example.org -- -wait is a flag
//
// ROOM is the bare JID of a group chat (XEP-0045 room, room@service); NICK
// defaults to the account's local part. send, listen and chat create a
// room that does not exist (non-anonymous, members-only, persistent, the
// account its owner) and refuse one that is not non-anonymous.
//
// Every command logs in (STARTTLS, SASL, resource binding), opens the OMEMO
// state file (which holds the private keys of this device: keep it private),
// publishes this device and sends an available presence, so that messages to
// the bare JID are delivered to it. An existing state file is opened before
// connecting; a new one is created only after the login succeeded. Only
// OMEMO encrypted messages are shown: unencrypted messages are ignored.
//
// # Files
//
// send -file uploads the file through the server's HTTP File Upload service
// (XEP-0363), encrypted with a fresh key (AES-256-GCM, XEP-0454), and sends
// its link in an OMEMO message; -file and a TEXT are mutually exclusive, and
// a file that cannot be read is an error before anything is sent. The result
// has "file":{"name":NAME,"size":BYTES,"sha256":HEX} between "id" and
// "devices" (text: "sent the file NAME (BYTES bytes, sha256 HEX) as ID to …").
//
// The link holds the file's key (aesgcm://…#KEY) and is never printed: a
// received file is printed as a message whose "body" is the file's name,
// followed by "file":
//
//	{"name":NAME,"url":URL}                                   not fetched (listen, chat, send -wait)
//	{"path":PATH,"name":NAME,"size":BYTES,"sha256":HEX}       listen -download DIR: saved as PATH
//	{"name":NAME,"url":URL,"error":TEXT}                      listen -download DIR: the download failed
//
// URL is the https URL of the encrypted file, without the key. With
// -download the file is downloaded, decrypted and verified before the line
// is printed, and saved in DIR under a safe name (no directories, no
// control characters) that replaces no file ("name (1).ext"); a download
// that fails (wrong key or tag, HTTP error, too large, untrusted
// certificate) is a warning on stderr and leaves nothing in DIR. In text
// mode the line ends with " [file, not downloaded: URL]",
// " [file saved as PATH, BYTES bytes, sha256 HEX]" or
// " [file not downloaded: ERROR]". -echo answers a file with "echo: " + its
// name. -insecure-skip-verify applies to the HTTPS transfers too. Uploads
// and downloads draw a progress bar on stderr when stderr is a terminal and
// -json is not set.
//
// # Connection
//
// listen and chat stay connected. When the connection is lost they print
//
//	{"event":"disconnected","error":TEXT}     text: "* disconnected: TEXT; reconnecting…"
//
// and try again after 1 s, doubling up to 60 s (plus jitter); once a new
// connection is set up (the rooms joined again, the messages sent meanwhile
// read from the archives and printed) they print
//
//	{"event":"connected"}                     text: "* connected again"
//
// These lines have no "body". The first connection prints no such line; if
// it fails (a wrong password, an unreachable server) the command fails at
// once, as every command does. Every message is printed once: a message is
// marked as handled in the state file only once it was printed, so what a
// command did not print (it ended before, or it does not print messages) is
// printed by the next listen or chat. At start, listen and chat also print
// what the account's archive holds for this device since its last run, and
// listen -room and chat -room what the room's archive holds since the last
// time. A line typed in chat while disconnected is not sent (an error says
// so); the echoes of listen -echo wait for the connection. SIGINT and
// SIGTERM end them cleanly. The other commands use one connection and fail
// if it is lost.
//
// # PostgreSQL
//
// With -store postgres://… (or postgresql://…, or either in the environment
// variable OMEMO_STORE when -store is not given) the state lives in a
// PostgreSQL database instead of a file, as the account named by the bare
// JID (see mellium.im/omemo/store/postgres: Open creates its tables, and
// the rest of the URL, such as sslmode or search_path, is the driver's).
// Many accounts, and many processes, can share one database. A process
// holds its account for as long as it runs: another omemo process on the
// same account waits up to 3 s for it and then fails with exit status 1:
//
//	omemo: account JID in the state database URL is in use by another omemo process (waited 3s): …
//
// The account is released when the process ends, also when it is killed
// (PostgreSQL ends its connections), so that another process, on this
// machine or another, can take it over at once; a listen started there
// prints what the killed one had not acknowledged (see Connection). As with
// a file, the account is opened and taken before the login and nothing is
// written to a new one unless the login succeeded. The URL is shown without
// its password in every message (as USER:xxxxx@HOST, password=xxxxx);
// PGPASSWORD and a password file work as for psql, and keep the password off
// the command line.
//
// A process that loses its account (the database ended its connections,
// or the network failed) can store nothing more: listen and chat then end
// with exit status 1 and "omemo: lost the account in the state database
// (…); start the command again: …". They do not reconnect to the
// database themselves; what they had not acknowledged is printed by the
// next run (a message printed just before may be printed again), and
// what they had not decrypted is read from the archive.
//
// Errors go to stderr and the exit status is 1 (2 for usage errors).
// Progress goes to stderr unless -json is set.
package main // import "mellium.im/omemo/cmd/omemo"

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/trust"
	"mellium.im/xmpp/jid"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// passwordEnv is the environment variable read when -password is not given.
const passwordEnv = "OMEMO_PASSWORD"

// errUsage marks errors in the command line; run prints the usage hint and
// exits with status 2.
var errUsage = errors.New("usage")

// usageError returns an error wrapping errUsage.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

const usageText = `usage: omemo [global flags] COMMAND [flags] [args]

global flags:
  -jid JID            account
  -password P         password (or the environment variable OMEMO_PASSWORD)
  -addr host:port     server address (default: resolved from the JID's domain)
  -store FILE         state file (default: one file per JID under the user's config directory)
  -store postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAMS]
                      the state in a PostgreSQL database instead (also postgresql://); -store's default is
                      the environment variable OMEMO_STORE, a FILE or such a URL
  -backends LIST      comma-separated backends in priority order: twomemo,oldmemo (default both, twomemo first)
  -trust MODE         btbv | tofu | manual (default btbv)
  -insecure-skip-verify   accept the server's TLS certificate without verification (local test servers)
  -json               machine-readable output, one JSON object per line on stdout

commands:
  send -to JID [-wait DURATION] TEXT     encrypt and send; with -wait, stay online and print replies until DURATION ends
  send -room ROOM [-nick NICK] [-wait DURATION] TEXT
                                         join ROOM, encrypt for its members and send; exits once the room returned the message
  send -to JID -file PATH [-wait DURATION]
  send -room ROOM [-nick NICK] -file PATH [-wait DURATION]
                                         upload the file encrypted (XEP-0454) and send it instead of a TEXT
  listen [-for DURATION] [-count N] [-echo]   print received messages; -echo answers each with "echo: " + text, encrypted
  listen -room ROOM [-nick NICK] [-for DURATION] [-count N] [-echo]
                                         also join ROOM and print its messages; -echo answers them in the room
  listen [-room ROOM [-nick NICK]] -download DIR [-for DURATION] [-count N] [-echo]
                                         also download, decrypt and verify received files into DIR
  chat JID                               interactive: each line on stdin is sent encrypted, each received message printed
  chat -room ROOM [-nick NICK]           interactive, in ROOM
  room create [-members JID,JID] ROOM    create ROOM (non-anonymous, members-only, persistent; you its owner), add the members
  room members ROOM                      the owners, admins and members of ROOM
  devices [-jid JID]                     id, label, fingerprint, trust, backends and active flag of each device
  trust -jid JID -fingerprint HEX -level trusted|distrusted|undecided
  fingerprint                            own device id and fingerprint

ROOM is a group chat's bare JID (room@conference.example.org); NICK defaults
to the account's local part. send, listen and chat create a ROOM that does
not exist, and refuse one that is not non-anonymous.

Flags go before TEXT: a word of TEXT that is a flag (-wait 5s, --to, -json…)
is refused. To send a text exactly as given, put -- before it:
  omemo -jid alice@example.org send -to bob@example.org -- -wait is a flag

Files: a received file is printed with its name as the body and
"file":{"name":NAME,"url":URL} (the https URL without the key; not fetched),
with listen -download DIR "file":{"path":PATH,"name":NAME,"size":BYTES,"sha256":HEX}
once saved in DIR (never replacing a file), or "file":{…,"error":TEXT} if the
download failed (nothing is left in DIR). The key is never printed.
-insecure-skip-verify applies to the HTTPS transfers too.

Connection: listen and chat reconnect (after 1 s, doubling up to 60 s) when
the connection is lost, printing {"event":"disconnected","error":TEXT} and,
once reconnected and caught up with the archives, {"event":"connected"}
(text: "* disconnected: …", "* connected again"); not for the first
connection, whose failure ends the command. Every message is printed once.

PostgreSQL: -store postgres://USER@HOST/DB (or OMEMO_STORE) keeps the state
in the database, as the account of the bare JID. Another omemo process on the
same account waits up to 3 s, then fails: "account JID in the state database
URL is in use by another omemo process". A killed process releases the
account at once. The password of the URL is never shown (PGPASSWORD or a
password file keep it off the command line).
`

// globals are the parsed global flags.
type globals struct {
	account  jid.JID
	password string
	addr     string
	store    string
	backends []backends.Factory
	policy   trust.Policy
	mode     string
	insecure bool
	json     bool
}

// env is the process environment of a run (replaced in tests).
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit status. ctx is
// cancelled on SIGINT and SIGTERM, which shuts the command down cleanly.
func run(ctx context.Context, args []string, e env) int {
	err := runErr(ctx, args, e)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(e.stderr, "omemo: %v\nRun 'omemo -h' for usage.\n", err)
		return exitUsage
	default:
		fmt.Fprintf(e.stderr, "omemo: %v\n", err)
		return exitError
	}
}

func runErr(ctx context.Context, args []string, e env) error {
	exec, g, cmdArgs, err := parseArgs(args, e)
	if err != nil {
		return err
	}
	return exec(ctx, g, cmdArgs, e)
}

// parseArgs parses and checks a command line: it returns the command to
// run, the global options and the command's arguments (what its flags
// left). Nothing is opened or connected.
func parseArgs(args []string, e env) (runFunc, *globals, []string, error) {
	fs := flag.NewFlagSet("omemo", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() { fmt.Fprint(e.stderr, usageText) }
	var (
		account  = fs.String("jid", "", "account `JID`")
		password = fs.String("password", "", "password (or the environment variable "+passwordEnv+")")
		addr     = fs.String("addr", "", "server address `host:port` (default: resolved from the JID's domain)")
		storeP   = fs.String("store", "", "state `FILE` (default: one file per JID under the user's config directory)")
		backs    = fs.String("backends", "twomemo,oldmemo", "comma-separated backends in priority order")
		mode     = fs.String("trust", "btbv", "trust `MODE`: btbv | tofu | manual")
		insecure = fs.Bool("insecure-skip-verify", false, "accept the server's TLS certificate without verification")
		jsonOut  = fs.Bool("json", false, "machine-readable output, one JSON object per line")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, nil, err
		}
		return nil, nil, nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return nil, nil, nil, usageError("no command given")
	}
	g := &globals{addr: *addr, store: *storeP, insecure: *insecure, json: *jsonOut}
	name, rest := fs.Arg(0), fs.Args()[1:]
	cmd, ok := commands[name]
	if strings.ContainsRune(name, ' ') {
		// "room create" is two words.
		ok = false
	}
	if subs := subcommands(name); !ok && len(subs) > 0 {
		// A group of commands ("room create", "room members").
		groupUsage := func() {
			for i, sub := range subs {
				prefix := "usage:"
				if i > 0 {
					prefix = "   or:"
				}
				fmt.Fprintf(e.stderr, "%s omemo [global flags] %s\n", prefix, commands[sub].usage[0])
			}
		}
		switch {
		case len(rest) > 0 && isHelpFlag(rest[0]):
			groupUsage()
			return nil, nil, nil, flag.ErrHelp
		case len(rest) == 0 || strings.HasPrefix(rest[0], "-"):
			groupUsage()
			var words []string
			for _, sub := range subs {
				words = append(words, strings.TrimPrefix(sub, name+" "))
			}
			return nil, nil, nil, usageError("%s: want a subcommand: %s", name, strings.Join(words, " or "))
		}
		name, rest = name+" "+rest[0], rest[1:]
		if cmd, ok = commands[name]; !ok {
			return nil, nil, nil, usageError("unknown command %q", name)
		}
	}
	if !ok {
		return nil, nil, nil, usageError("unknown command %q", name)
	}
	cfs := flag.NewFlagSet("omemo "+name, flag.ContinueOnError)
	cfs.SetOutput(e.stderr)
	cfs.Usage = func() {
		for i, u := range cmd.usage {
			prefix := "usage:"
			if i > 0 {
				prefix = "   or:"
			}
			fmt.Fprintf(e.stderr, "%s omemo [global flags] %s\n", prefix, u)
		}
		cfs.PrintDefaults()
		if len(cmd.text) > 0 {
			fmt.Fprintf(e.stderr, "Flags go before TEXT: a word of TEXT that is a flag is refused.\n"+
				"To send a text exactly as given, put -- before it: omemo [global flags] %s\n", cmd.text[0])
			for _, t := range cmd.text[1:] {
				fmt.Fprintf(e.stderr, "  or: omemo [global flags] %s\n", t)
			}
		}
	}
	exec := cmd.setup(cfs)
	if err := cfs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, nil, err
		}
		return nil, nil, nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if len(cmd.text) > 0 {
		// The hint shows the form used: to a contact or (send -room)
		// to a room.
		example := cmd.text[0]
		if f := cfs.Lookup("room"); f != nil && f.Value.String() != "" && len(cmd.text) > 1 {
			example = cmd.text[1]
		}
		if err := checkText(name, example, cfs, fs, rest); err != nil {
			return nil, nil, nil, err
		}
	}

	// The global options are checked after the command's, so that
	// "omemo send -h" works without an account.
	if *account == "" {
		return nil, nil, nil, usageError("-jid is required")
	}
	j, err := jid.Parse(*account)
	if err != nil || j.Localpart() == "" {
		return nil, nil, nil, usageError("-jid %q is not an account JID (user@domain)", *account)
	}
	g.account = j
	g.password = *password
	if g.password == "" && e.getenv != nil {
		g.password = e.getenv(passwordEnv)
	}
	storeSet := false
	fs.Visit(func(f *flag.Flag) { storeSet = storeSet || f.Name == "store" })
	if !storeSet && e.getenv != nil {
		g.store = e.getenv(storeEnv)
	}
	if g.backends, err = parseBackends(*backs); err != nil {
		return nil, nil, nil, err
	}
	g.mode = strings.ToLower(strings.TrimSpace(*mode))
	if g.policy, err = trust.ParsePolicy(g.mode, nil); err != nil {
		return nil, nil, nil, usageError("-trust %q: want btbv, tofu or manual", *mode)
	}
	return exec, g, cfs.Args(), nil
}

// parseBackends parses the -backends list.
func parseBackends(list string) ([]backends.Factory, error) {
	var out []backends.Factory
	seen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.ToLower(strings.TrimSpace(name))
		var f backends.Factory
		switch name {
		case "twomemo", "omemo2", "omemo:2":
			f = twomemo.Factory
		case "oldmemo", "legacy":
			f = oldmemo.Factory
		case "":
			continue
		default:
			return nil, usageError("-backends: unknown backend %q (want twomemo, oldmemo)", name)
		}
		if seen[f.Namespace] {
			return nil, usageError("-backends: %q given twice", name)
		}
		seen[f.Namespace] = true
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, usageError("-backends: no backend given")
	}
	return out, nil
}

// command is one subcommand: setup registers its flags on the command's
// flag set and returns the function that runs it with the remaining
// arguments. A name with a space ("room create") is a command of a group
// ("room").
type command struct {
	// usage are the forms of the command, without "omemo [global flags]".
	usage []string
	// text is set for a command whose arguments are free text: the
	// command's usage with -- before the text, for each form (the second
	// is the form with -room). See checkText.
	text  []string
	setup func(fs *flag.FlagSet) func(ctx context.Context, g *globals, args []string, e env) error
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"send": {
			usage: []string{"send -to JID [-wait DURATION] TEXT", "send -room ROOM [-nick NICK] [-wait DURATION] TEXT",
				"send -to JID -file PATH [-wait DURATION]", "send -room ROOM [-nick NICK] -file PATH [-wait DURATION]"},
			text:  []string{"send -to JID [-wait DURATION] -- TEXT", "send -room ROOM [-nick NICK] [-wait DURATION] -- TEXT"},
			setup: setupSend,
		},
		"listen": {
			usage: []string{"listen [-for DURATION] [-count N] [-echo]", "listen -room ROOM [-nick NICK] [-for DURATION] [-count N] [-echo]",
				"listen [-room ROOM [-nick NICK]] -download DIR [-for DURATION] [-count N] [-echo]"},
			setup: setupListen,
		},
		"chat":         {usage: []string{"chat JID", "chat -room ROOM [-nick NICK]"}, setup: setupChat},
		"room create":  {usage: []string{"room create [-members JID,JID] ROOM"}, setup: setupRoomCreate},
		"room members": {usage: []string{"room members ROOM"}, setup: setupRoomMembers},
		"devices":      {usage: []string{"devices [-jid JID]"}, setup: setupDevices},
		"trust":        {usage: []string{"trust -jid JID -fingerprint HEX -level trusted|distrusted|undecided"}, setup: setupTrust},
		"fingerprint":  {usage: []string{"fingerprint"}, setup: setupFingerprint},
	}
}

// subcommands returns the sorted names of the commands of the group name
// ("room create", "room members" for "room").
func subcommands(name string) []string {
	var out []string
	for n := range commands {
		if strings.HasPrefix(n, name+" ") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// isHelpFlag reports whether word asks for help (-h, --help…).
func isHelpFlag(word string) bool {
	name, hasValue, ok := parseFlagWord(word)
	return ok && !hasValue && (name == "h" || name == "help")
}

// opTimeout bounds each network operation (login, start, send, fetch).
const opTimeout = 60 * time.Second

// checkText refuses the free text of command name (the arguments left by
// cfs after parsing args) if one of its words is a flag of the command or
// a global flag (global is the global flag set), unless the text follows
// the terminator "--". The flag package stops at the first word that is
// not a flag, so a flag typed after the text would otherwise be sent as
// part of it: "send -to bob@example.org hello -wait 5s" would send
// "hello -wait 5s" to the contact, and "… -password=x" the password.
// example is the command's usage with -- before the text, for the hint.
func checkText(name, example string, cfs, global *flag.FlagSet, args []string) error {
	if terminated(cfs, args) {
		return nil
	}
	for _, word := range cfs.Args() {
		flagName, _, ok := parseFlagWord(word)
		if !ok {
			continue
		}
		shown := word // without a value: "-password=x" is shown as "-password"
		if i := strings.IndexByte(word, '='); i >= 0 {
			shown = word[:i]
		}
		switch {
		case cfs.Lookup(flagName) != nil || flagName == "h" || flagName == "help":
			return usageError("%s: %q after the text is a flag of %s: put the flags before the text, "+
				"or put -- before the text to send it exactly as given (%s)", name, shown, name, example)
		case global.Lookup(flagName) != nil:
			return usageError("%s: %q after the text is a global flag: global flags go before the command; "+
				"put -- before the text to send it exactly as given (%s)", name, shown, example)
		}
	}
	return nil
}

// terminated reports whether fs stopped parsing args at the terminator
// "--" (which the flag package consumes) rather than at the first word
// that is not a flag. fs must have parsed args without error.
func terminated(fs *flag.FlagSet, args []string) bool {
	parsed := args[:len(args)-fs.NArg()]
	for i := 0; i < len(parsed); i++ {
		if parsed[i] == "--" {
			return i == len(parsed)-1
		}
		name, hasValue, ok := parseFlagWord(parsed[i])
		if !ok || hasValue {
			continue
		}
		if f := fs.Lookup(name); f != nil && !isBoolFlag(f) {
			i++ // the flag's value
		}
	}
	return false
}

// parseFlagWord parses a word the way the flag package reads a flag: one
// or two dashes, a name, optionally "=" and a value. ok is false for a
// word that is not a flag ("-", "--", "5", "---x", "-=x").
func parseFlagWord(word string) (name string, hasValue, ok bool) {
	if len(word) < 2 || word[0] != '-' {
		return "", false, false
	}
	name = word[1:]
	if name[0] == '-' {
		name = name[1:]
	}
	if name == "" || name[0] == '-' || name[0] == '=' {
		return "", false, false
	}
	if i := strings.IndexByte(name, '='); i >= 0 {
		return name[:i], true, true
	}
	return name, false, true
}

// isBoolFlag reports whether f takes no value (as the flag package
// decides it).
func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}
