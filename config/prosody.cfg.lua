-- Prosody 0.12 for the pua-xmpp gateway (template used by the end-to-end tests).
-- tests/lab/start.sh renders it to $RUN_DIR/prosody.cfg.lua, replacing only
--   @RUN_DIR@  run directory (default /tmp/pua-xmpp-lab)
--   @LAB_IP@   address every listener binds to (default 127.0.0.1)
--   @SECRET@   XEP-0114 component secret (default gwsecret)
-- No TLS, no s2s, no DNS: clients and the component connect by IP.
-- In production: enable TLS, drop run_as_root and the plaintext PLAIN auth.

data_path = "@RUN_DIR@/prosody-data"
certificates = "@RUN_DIR@/certs"      -- empty: no TLS in the lab
run_as_root = true                    -- lab only: start.sh may run as root
log = {
    debug = "@RUN_DIR@/prosody.log";
}

interfaces = { "@LAB_IP@" }
local_interfaces = { "@LAB_IP@" }
c2s_interfaces = { "@LAB_IP@" }
c2s_ports = { 5222 }
component_interfaces = { "@LAB_IP@" }
component_ports = { 5347 }

modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "presence"; }
modules_disabled = { "s2s"; "tls"; "offline"; "c2s_bidi"; }
use_libevent = false

c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true   -- SASL PLAIN over plain TCP
authentication = "internal_plain"
storage = "internal"
allow_registration = false           -- users are created by start.sh (prosodyctl register)

-- XMPP domain of the users (alice@xmpp.test <-> sip:alice*xmpp.test@sip-xmpp.test)
VirtualHost "xmpp.test"

-- XEP-0114 external component: the pua-xmpp gateway connects here.
-- JIDs of SIP users: bob*sip.test@sip.xmpp.test  (= sip:bob@sip.test)
Component "sip.xmpp.test"
    component_secret = "@SECRET@"
