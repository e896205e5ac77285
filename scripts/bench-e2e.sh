#!/usr/bin/env bash
# End-to-end OMEMO benchmark: the Go plugin (mellium.im/omemo) and the Python
# reference (python-omemo 1.0.2 + slixmpp) run the same workloads against
# one throw-away local Prosody, one after the other, and the figures are
# printed side by side (see bench/e2e/ and the README).
#
#   bash scripts/bench-e2e.sh        # RUNS=5 MESSAGES=200 DEVICES=3 PYHASHSEED=0 ROUNDS=5
#
# The Go program also plays, ROUNDS times on the same connections, the
# ping-pong of plain <body> messages (two more accounts, no OMEMO) next to
# the OMEMO one, and prints both with the ratio OMEMO/plain and the cost
# per message (wall time, CPU of the clients and of Prosody, bytes read).
#
#   QUICK=1 bash scripts/bench-e2e.sh     # only that: no first message, no Python
#   STORE=bolt bash scripts/bench-e2e.sh  # Go devices on the persistent store
#   PROFILE_DIR=/tmp/p bash scripts/bench-e2e.sh   # + CPU, block and mutex
#       profiles of an extra OMEMO round (omemo.cpu, omemo.block,
#       omemo.mutex) and a CPU profile of an extra plain round (plain.cpu)
#
# Needs /usr/bin/prosody, /usr/bin/prosodyctl, openssl and /usr/bin/python3
# with python3-omemo, python3-twomemo, python3-oldmemo, python3-slixmpp.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prosody-config.sh
export PATH="/usr/local/go/bin:$PATH"
RUNS="${RUNS:-5}"
MESSAGES="${MESSAGES:-200}"
DEVICES="${DEVICES:-3}"
PY=/usr/bin/python3
# python-omemo 1.0.2 looks a device's identity key up in the bundle of the
# first namespace of a frozenset, whose order depends on the string hash
# seed: with OMEMO 2 first (seed 0) the bundle is reused to build the session
# (3 bundle downloads); with legacy first it downloads 6 bundles, one after
# the other. Seed 0 makes runs reproducible and is the faster path.
PYHASHSEED="${PYHASHSEED:-0}"
ROUNDS="${ROUNDS:-5}"
QUICK="${QUICK:-}"
PROFILE_DIR="${PROFILE_DIR:-}"
STORE="${STORE:-memory}"

dir=$(mktemp -d)
prosody_pid=""
cleanup() {
	if [ -n "$prosody_pid" ]; then
		kill "$prosody_pid" 2>/dev/null || true
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			kill -0 "$prosody_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$prosody_pid" 2>/dev/null || true
		wait "$prosody_pid" 2>/dev/null || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT

# Build first, so that compilation is not part of anything measured.
go build -o "$dir/e2e" ./bench/e2e

# A free loopback port (small race window, as in internal/prosodytest).
port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
	-keyout "$dir/localhost.key" -out "$dir/localhost.crt" -days 1 \
	-subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" >/dev/null 2>&1

# The configuration of internal/prosodytest, with one deviation: Nagle off
# (TCP_NODELAY). With Nagle on, the tail of an IQ answer sent while an
# earlier large answer is unacknowledged waits for the client's delayed ACK
# (~40 ms on Linux): three bundle fetches in parallel took ~58 ms instead of
# ~12 ms.
prosody_config "$dir" "$port" info 'network_settings = { nagle = false }' >"$dir/prosody.cfg.lua"

# Identical account sets for both stacks: the contact, one fresh sender per
# latency run, the two ping-pong accounts (and the Go program's two plain
# ones).
for p in go py; do
	users="${p}bob ${p}ping ${p}pong ${p}plainping ${p}plainpong"
	for i in $(seq 1 "$RUNS"); do users="$users ${p}send$i"; done
	for u in $users; do
		/usr/bin/prosodyctl --config "$dir/prosody.cfg.lua" register "$u" localhost password >/dev/null
	done
done

/usr/bin/prosody --config "$dir/prosody.cfg.lua" -F >"$dir/console.log" 2>&1 &
prosody_pid=$!
for _ in $(seq 1 100); do
	if $PY -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" 2>/dev/null; then
		break
	fi
	kill -0 "$prosody_pid" 2>/dev/null || { cat "$dir/console.log" >&2; exit 1; }
	sleep 0.1
done

common=(-addr "127.0.0.1:$port" -runs "$RUNS" -messages "$MESSAGES" -devices "$DEVICES")
goflags=(-rounds "$ROUNDS" -server-pid "$prosody_pid" -store "$STORE")
[ -n "$QUICK" ] && goflags+=(-quick)
if [ -n "$PROFILE_DIR" ]; then
	mkdir -p "$PROFILE_DIR"
	cp "$dir/e2e" "$PROFILE_DIR/e2e.bin"
	goflags+=(-cpuprofile "$PROFILE_DIR/omemo.cpu" -blockprofile "$PROFILE_DIR/omemo.block"
		-mutexprofile "$PROFILE_DIR/omemo.mutex" -plaincpuprofile "$PROFILE_DIR/plain.cpu" -trace "$PROFILE_DIR/omemo.trace")
fi
echo "== Go (mellium.im/omemo) ==" >&2
"$dir/e2e" "${common[@]}" "${goflags[@]}" -prefix go | tee "$dir/go.out"

get() { awk -v k="$2" '$1 == k { print $2 }' "$1" | tail -1; }
# "<kind>_us_per_msg wall W client_cpu C server_cpu S bytes B"
cost() { awk -v k="$2_us_per_msg" -v f="$3" '$1 == k { for (i = 2; i < NF; i++) if ($i == f) print $(i + 1) }' "$1" | tail -1; }
plain_mps=$(get "$dir/go.out" plain_mps)
shaped_mps=$(get "$dir/go.out" shaped_mps)
omemo_mps=$(get "$dir/go.out" omemo_mps)
echo
echo "Ping-pong through the same server in one run, $MESSAGES messages per round, median of $ROUNDS rounds:"
echo "plain = <body> only; shaped = plain messages carrying a copy of an OMEMO stanza's elements"
echo "(the server's work of OMEMO without any encryption); OMEMO = the plugin."
printf '%-30s %12s %12s %12s\n' "" "plain" "shaped" "OMEMO"
printf '%-30s %12s %12s %12s\n' "messages per second" "$plain_mps" "$shaped_mps" "$omemo_mps"
for f in wall client_cpu server_cpu; do
	printf '%-30s %12s %12s %12s\n' "per message: $f (us)" "$(cost "$dir/go.out" plain $f)" "$(cost "$dir/go.out" shaped $f)" "$(cost "$dir/go.out" omemo $f)"
done
printf '%-30s %12s %12s %12s\n' "bytes read per message" "$(cost "$dir/go.out" plain bytes)" "$(cost "$dir/go.out" shaped bytes)" "$(cost "$dir/go.out" omemo bytes)"
echo "OMEMO/plain $(get "$dir/go.out" omemo_plain_ratio), OMEMO/shaped $(get "$dir/go.out" omemo_shaped_ratio) (medians of the per-round ratios)"
if [ -n "$QUICK" ]; then
	exit 0
fi

echo "== Python (python-omemo 1.0.2 + slixmpp) ==" >&2
PYTHONHASHSEED="$PYHASHSEED" $PY bench/e2e/pyclient.py "${common[@]}" -prefix py | tee "$dir/py.out"
go_lat=$(get "$dir/go.out" latency_ms)
py_lat=$(get "$dir/py.out" latency_ms)
go_mps=$(get "$dir/go.out" pingpong_mps)
py_mps=$(get "$dir/py.out" pingpong_mps)
go_rounds=$(awk '$1 == "go_run_pep_rounds" { print $2 }' "$dir/go.out" | sort -n | uniq | paste -sd/)
go_iqs=$(awk '$1 == "go_run_pep_iqs" { print $2 }' "$dir/go.out" | sort -n | uniq | paste -sd/)
echo
printf '%-46s %12s %12s %14s\n' "workload" "Go" "Python" "Python/Go"
printf '%-46s %12s %12s %14s\n' "first message to $DEVICES devices, median of $RUNS (ms)" \
	"$go_lat" "$py_lat" "$(awk -v a="$py_lat" -v b="$go_lat" 'BEGIN { printf "%.2f", a / b }')"
printf '%-46s %12s %12s %14s\n' "ping-pong, $MESSAGES messages (msg/s)" \
	"$go_mps" "$py_mps" "$(awk -v a="$py_mps" -v b="$go_mps" 'BEGIN { printf "%.2f", a / b }')"
py_rounds=$(awk '$1 == "py_run_pep_rounds" { print $2 }' "$dir/py.out" | sort -n | uniq | paste -sd/)
py_iqs=$(awk '$1 == "py_run_pep_iqs" { print $2 }' "$dir/py.out" | sort -n | uniq | paste -sd/)
echo "PEP IQs of the sender during the first send: Go $go_iqs (critical path $go_rounds sequential round trips), Python $py_iqs ($py_rounds); per-run detail on stderr"
