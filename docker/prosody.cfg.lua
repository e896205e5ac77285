-- Prosody for mellium.im/omemo's demo (docker-compose.yml): the settings of
-- the test server in internal/prosodytest, for one virtual host, localhost.
-- Not for production: no s2s, no registration, a self-signed certificate.
--
-- HTTP File Upload (XEP-0363) for encrypted file sharing (XEP-0454) is
-- served over HTTPS only, on the port UPLOAD_PORT (default 5281), and the
-- slot URLs are https://localhost:UPLOAD_PORT/file_share/...: the port
-- docker-compose.yml publishes on the host must be the same number, which
-- is why the port inside the container follows the variable too.
local upload_port = tonumber(ENV_UPLOAD_PORT or "5281")
if not upload_port or upload_port < 1 or upload_port > 65535 or upload_port % 1 ~= 0 then
	error("UPLOAD_PORT must be a port number, not '" .. tostring(ENV_UPLOAD_PORT) .. "'")
end

pidfile = "/run/prosody/prosody.pid"
data_path = "/var/lib/prosody"
certificates = "/etc/prosody/certs"

-- Inside the container; docker-compose.yml publishes c2s and HTTPS on
-- 127.0.0.1 only.
interfaces = { "*" }
c2s_ports = { 5222 }
use_ipv6 = false
-- HTTPS for the upload component only: no plain HTTP port (its default
-- would be opened otherwise). The certificate is the one for "localhost".
http_ports = { }
https_ports = { upload_port }
-- server_select, as in the tests: with the default server_epoll, HTTP
-- uploads to Prosody 0.12 crawl.
network_backend = "select"

modules_enabled = {
	"roster"; "saslauth"; "tls"; "disco";
	"pep";     -- device lists and bundles, with publish-options (access_model=open, max_items=max)
	"carbons"; -- XEP-0280: a copy of every message to the account's other devices
	"mam";     -- XEP-0313: the archive that Plugin.CatchUp reads
	"offline"; -- messages to an account with no device online
	"ping";
}
modules_disabled = { "s2s"; "admin_telnet"; "register" }
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

-- HTTP File Upload (XEP-0363), listed in localhost's disco#items; files of
-- up to 100 MiB, kept for a week (at most until `docker compose down`).
Component "upload.localhost" "http_file_share"
	http_host = "localhost"
	http_external_url = "https://localhost:" .. upload_port .. "/"
	http_file_share_size_limit = 100 * 1024 * 1024
