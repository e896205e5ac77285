#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine, installing what it
# needs first. This is the README's test command and what CI runs.
#
#   bash scripts/test.sh            # everything: vet, gofmt, race tests, short fuzz runs
#   FUZZTIME=30s bash scripts/test.sh
#
# The tests use the Python reference implementation (Debian's python3-omemo
# stack, run with /usr/bin/python3) as an oracle, and converse.js in
# Debian's headless chromium (npm packages in testdata/converse) as a peer.
# With CI=true a missing oracle or peer fails the tests instead of skipping
# them.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
FUZZTIME="${FUZZTIME:-5s}"

debs=(python3-omemo python3-twomemo python3-oldmemo python3-x3dh
      python3-doubleratchet python3-xeddsa python3-xmlschema python3-slixmpp python3-cryptography
      protobuf-compiler prosody ejabberd chromium postgresql)
# Node.js and npm for the converse.js test: Debian's, unless the machine has
# its own.
command -v node >/dev/null 2>&1 || debs+=(nodejs)
command -v npm >/dev/null 2>&1 || debs+=(npm)
missing=()
for p in "${debs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "== installing ${missing[*]}" >&2
	SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# The package may start a system-wide ejabberd on every interface; the
	# tests start their own on 127.0.0.1 and need no other.
	if [[ " ${missing[*]} " == *" ejabberd "* ]]; then
		$SUDO systemctl stop ejabberd >/dev/null 2>&1 || $SUDO ejabberdctl stop >/dev/null 2>&1 || true
	fi
fi

echo "== go mod download" >&2
go mod download

# The converse.js test's packages, exactly as locked. No install script runs
# (none is needed; puppeteer-core downloads no browser).
echo "== npm ci (testdata/converse)" >&2
(cd testdata/converse && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

echo "== gofmt / go vet" >&2
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed on: $unformatted" >&2
	exit 1
fi
go vet ./...

echo "== go test -race" >&2
go test -race -count=1 ./...

# The race detector makes the gateway test (many accounts in one process on
# one store) run 16 accounts; without it, it runs the full 200: here on
# PostgreSQL (the bbolt variant takes as long; run it with
# go test -run TestIntegrationGateway ./integration_test/).
echo "== the gateway test with 200 accounts on PostgreSQL" >&2
go test -count=1 -run '^TestIntegrationGateway$/^postgres$' ./integration_test/

echo "== short fuzz runs ($FUZZTIME each)" >&2
# Only the packages that have fuzz targets are compiled again (without the
# race detector) for them.
for dir in $(grep -l --include='*_test.go' -r '^func Fuzz' . | xargs -n1 dirname | sort -u); do
	pkg=$(go list "$dir")
	for target in $(grep -h -o '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
		echo "-- $pkg $target" >&2
		# A fuzz run that only hit the coordinator's deadline (a known
		# flake of go test -fuzz on loaded machines, with no failing input
		# written) is run once more; a real failure fails the suite.
		for attempt in 1 2; do
			if go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg" >/tmp/fuzz-$$.log 2>&1; then
				break
			fi
			if [ "$attempt" = 1 ] && grep -q 'context deadline exceeded' /tmp/fuzz-$$.log &&
				! grep -q 'Failing input written' /tmp/fuzz-$$.log; then
				echo "   (deadline flake, retrying)" >&2
				continue
			fi
			cat /tmp/fuzz-$$.log; exit 1
		done
	done
done
rm -f /tmp/fuzz-$$.log
echo "== all tests passed" >&2
