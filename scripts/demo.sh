#!/usr/bin/env bash
# Runs cmd/omemo-demo (a scripted OMEMO conversation between alice, with two
# devices, and bob, then an encrypted file that alice shares with bob over
# HTTP File Upload) against a throw-away local Prosody, then stops the server.
#
#   bash scripts/demo.sh                   # as root on a fresh Debian 12 machine
#   bash scripts/demo.sh -v                # extra flags go to omemo-demo
#   DEMO_SERVER=debian bash scripts/demo.sh
#
# DEMO_SERVER picks the server:
#   auto    (default) docker when a Docker engine and the compose plugin
#           answer, debian otherwise;
#   docker  `docker compose up` of docker-compose.yml, c2s and HTTPS upload
#           on free ports of 127.0.0.1, taken down again at the end;
#   debian  Debian's prosody (installed with apt-get if missing), configured
#           in a temporary directory like internal/prosodytest does
#           (scripts/prosody-config.sh): c2s and HTTP File Upload over HTTPS
#           on free ports of 127.0.0.1, self-signed certificate, the accounts
#           registered with prosodyctl; killed and deleted at the end.
# ALICE_PASSWORD and BOB_PASSWORD set the passwords (defaults: alice, bob).
#
# Needs Go (go.mod's version, on PATH or in /usr/local/go/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prosody-config.sh

export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
DEMO_SERVER="${DEMO_SERVER:-auto}"
ALICE_PASSWORD="${ALICE_PASSWORD:-alice}"
BOB_PASSWORD="${BOB_PASSWORD:-bob}"
export ALICE_PASSWORD BOB_PASSWORD

say() { echo "== $*" >&2; }
die() { echo "demo.sh: $*" >&2; exit 2; }

command -v go >/dev/null || die "Go is not installed: get $(sed -n 's/^go //p' go.mod) or newer from https://go.dev/dl/ (unpack into /usr/local)"

# A free port on 127.0.0.1: nothing answers on it. There is a small window in
# which another process could take it.
free_port() {
	local p
	for _ in $(seq 50); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	die "no free port found"
}

# Waits until something accepts TCP connections on 127.0.0.1:$1.
wait_port() {
	local port=$1 pid=${2:-}
	for _ in $(seq 100); do
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			return 1
		fi
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# Waits until an XMPP server answers a stream header on 127.0.0.1:$1 (a bare
# TCP connect is not enough behind docker's port proxy).
wait_xmpp() {
	local port=$1 pid=${2:-}
	for _ in $(seq 300); do
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			return 1
		fi
		if timeout 3 bash -c '
			exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
			printf "<?xml version=\"1.0\"?><stream:stream to=\"localhost\" version=\"1.0\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\">" >&3
			for _ in 1 2 3; do
				IFS= read -r -t 2 -d ">" chunk <&3 || exit 1
				[[ $chunk == *stream:stream* ]] && exit 0
			done
			exit 1' "$port" 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

if [ "$DEMO_SERVER" = auto ]; then
	DEMO_SERVER=debian
	if command -v docker >/dev/null && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
		DEMO_SERVER=docker
	fi
fi

say "building cmd/omemo-demo"
work=$(mktemp -d /tmp/omemo-demo.XXXXXX)
go build -o "$work/omemo-demo" ./cmd/omemo-demo

server_pid=""
compose_started=false
cleanup() {
	if [ "$compose_started" = true ]; then
		say "stopping the docker compose service"
		docker compose down --timeout 5 >/dev/null 2>&1 || true
	elif [ -n "$server_pid" ]; then
		say "stopping prosody"
		kill -TERM "$server_pid" 2>/dev/null || true
		for _ in $(seq 20); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
upload_port=$(free_port)
while [ "$upload_port" = "$port" ]; do upload_port=$(free_port); done
case "$DEMO_SERVER" in
docker)
	docker info >/dev/null 2>&1 || die "DEMO_SERVER=docker: no Docker engine answers (docker info)"
	docker compose version >/dev/null 2>&1 || die "DEMO_SERVER=docker: the docker compose plugin is missing"
	export XMPP_PORT="$port" UPLOAD_PORT="$upload_port"
	say "starting prosody with docker compose on 127.0.0.1:$port (HTTPS upload on $upload_port)"
	compose_started=true
	docker compose up --detach --build --wait
	wait_xmpp "$port" || { docker compose logs; die "prosody (docker) does not answer on port $port"; }
	wait_port "$upload_port" || { docker compose logs; die "prosody (docker) does not listen for HTTPS on port $upload_port"; }
	;;
debian)
	missing=()
	for p in prosody openssl; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ "${#missing[@]}" -gt 0 ]; then
		say "installing ${missing[*]}"
		SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
		$SUDO apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	say "starting prosody ($(dpkg-query -W -f='${Version}' prosody)) in $work on 127.0.0.1:$port (HTTPS upload on $upload_port)"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
		-subj /CN=localhost -addext subjectAltName=DNS:localhost \
		-keyout "$work/localhost.key" -out "$work/localhost.crt" 2>/dev/null
	chmod 600 "$work/localhost.key"
	prosody_config "$work" "$port" debug "" "$upload_port" >"$work/prosody.cfg.lua"
	prosodyctl --config "$work/prosody.cfg.lua" register alice localhost "$ALICE_PASSWORD" >/dev/null
	prosodyctl --config "$work/prosody.cfg.lua" register bob localhost "$BOB_PASSWORD" >/dev/null
	prosody --config "$work/prosody.cfg.lua" -F >"$work/console.log" 2>&1 &
	server_pid=$!
	if ! wait_xmpp "$port" "$server_pid" || ! wait_port "$upload_port" "$server_pid"; then
		cat "$work/console.log" >&2
		tail -n 30 "$work/prosody.log" >&2 2>/dev/null || true
		die "prosody did not start"
	fi
	;;
*)
	die "DEMO_SERVER must be auto, docker or debian, not '$DEMO_SERVER'"
	;;
esac

say "running omemo-demo"
status=0
"$work/omemo-demo" -addr "127.0.0.1:$port" -insecure-skip-verify \
	-alice alice@localhost -alice-password "$ALICE_PASSWORD" \
	-bob bob@localhost -bob-password "$BOB_PASSWORD" "$@" || status=$?
if [ "$status" -ne 0 ] && [ -n "$server_pid" ] && [ -s "$work/console.log" ]; then
	echo "-- prosody warnings --" >&2
	tail -n 30 "$work/console.log" >&2
fi
exit "$status"
