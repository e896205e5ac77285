-- Prosody for mellium.im/omemo's demo (docker-compose.yml): the settings of
-- the test server in internal/prosodytest, for one virtual host, localhost.
-- Not for production: no s2s, no registration, a self-signed certificate.

pidfile = "/run/prosody/prosody.pid"
data_path = "/var/lib/prosody"
certificates = "/etc/prosody/certs"

-- Inside the container; docker-compose.yml publishes c2s on 127.0.0.1 only.
interfaces = { "*" }
c2s_ports = { 5222 }
use_ipv6 = false

modules_enabled = {
	"roster"; "saslauth"; "tls"; "disco";
	"pep";     -- device lists and bundles, with publish-options (access_model=open, max_items=max)
	"carbons"; -- XEP-0280: a copy of every message to the account's other devices
	"mam";     -- XEP-0313: the archive that Plugin.CatchUp reads
	"offline"; -- messages to an account with no device online
	"ping";
}
modules_disabled = { "s2s"; "http"; "admin_telnet"; "register" }
allow_registration = false
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"

-- The largest pubsub#max_items a PEP node may have ("max" in
-- publish-options): legacy OMEMO keeps one node per device bundle, and
-- OMEMO 2 one item per device in the bundles node.
pep_max_items = 10000

-- Archive every message (including body-less OMEMO ones), forever.
archive_expires_after = "never"
default_archive_policy = true

log = {
	{ levels = { min = "info" }, to = "console" };
}

VirtualHost "localhost"
