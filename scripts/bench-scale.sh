#!/usr/bin/env bash
# Scale benchmark of the session manager (bench/scale, issue 16): one
# account with many peer devices, many accounts in one process, and the
# PostgreSQL store next to bbolt; prints the tables of the README's "Scale"
# section.
#
#   bash scripts/bench-scale.sh                # the full run: 1,000 / 10,000 /
#                                              # 200,000 devices, 1,000 / 10,000
#                                              # accounts (an hour or more on 2 cores)
#   SCALE=quick bash scripts/bench-scale.sh    # 1,000 / 10,000 devices, 1,000
#                                              # accounts (a few minutes)
#   STORES=bolt bash scripts/bench-scale.sh    # bbolt only (no PostgreSQL needed)
#   DSN=postgres://... bash scripts/bench-scale.sh   # an existing server instead
#                                              # of a throw-away cluster
#   OUT=scale.md bash scripts/bench-scale.sh   # also write the tables to a file
#
# More flags go to the program: bash scripts/bench-scale.sh -devices 50000 -v
# (see go run ./bench/scale -h).
#
# For PostgreSQL the program starts a throw-away PostgreSQL 15 cluster in a
# temporary directory on 127.0.0.1 (Debian's /usr/lib/postgresql/15/bin;
# as the postgres user when run as root; fsync on), and each case uses a
# database of its own. bbolt files go to TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
SCALE="${SCALE:-full}"
STORES="${STORES:-bolt,postgres}"
DSN="${DSN:-}"
OUT="${OUT:-}"

args=(-stores "$STORES")
case "$SCALE" in
full) ;;
quick) args+=(-quick) ;;
*)
	echo "SCALE must be full or quick" >&2
	exit 2
	;;
esac
if [[ -n "$DSN" ]]; then
	args+=(-dsn "$DSN")
elif [[ ",$STORES," == *,postgres,* && ! -x /usr/lib/postgresql/15/bin/postgres ]]; then
	echo "PostgreSQL 15 is not installed (apt-get install -y postgresql); use STORES=bolt or DSN=..." >&2
	exit 1
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/scale" ./bench/scale
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(go version | cut -d' ' -f3), SCALE=$SCALE, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [[ -n "$OUT" ]]; then
	"$bin/scale" "${args[@]}" "$@" | tee "$OUT"
else
	"$bin/scale" "${args[@]}" "$@"
fi
