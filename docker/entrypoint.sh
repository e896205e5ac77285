#!/bin/sh
# Creates the certificate and the two demo accounts, then runs Prosody in the
# foreground as the prosody user.
set -eu

: "${ALICE_PASSWORD:=alice}"
: "${BOB_PASSWORD:=bob}"

mkdir -p /etc/prosody/certs /run/prosody /var/lib/prosody
if [ ! -s /etc/prosody/certs/localhost.crt ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
		-subj /CN=localhost -addext subjectAltName=DNS:localhost \
		-keyout /etc/prosody/certs/localhost.key -out /etc/prosody/certs/localhost.crt 2>/dev/null
fi
chown root:prosody /etc/prosody/certs/localhost.key /etc/prosody/certs/localhost.crt
chmod 0640 /etc/prosody/certs/localhost.key
chown -R prosody:prosody /run/prosody /var/lib/prosody

# prosodyctl drops to the prosody user itself; register sets the password
# again if the account exists.
prosodyctl register alice localhost "$ALICE_PASSWORD"
prosodyctl register bob localhost "$BOB_PASSWORD"

exec setpriv --reuid=prosody --regid=prosody --init-groups prosody -F
