//! Gateway configuration: built-in defaults, then a TOML file, then `PUA_XMPP__SECTION__KEY`
//! environment variables, then [`Config::validate`]. Every error names the offending key, so
//! an operator can fix a typo without reading code; unknown keys are errors for the same reason.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

/// Prefix of environment overrides: `PUA_XMPP__XMPP__SECRET` sets `xmpp.secret`.
pub const ENV_PREFIX: &str = "PUA_XMPP";
/// Secret shipped as default; starting with it gets a loud warning.
pub const DEFAULT_SECRET: &str = "secret";
/// `store.path` when none is given.
pub const DEFAULT_STORE_PATH: &str = "pua-xmpp.db";
/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 6] = [
    "sip.trusted_peers",
    "http.allow",
    "sip.dns_servers",
    "mapping.gwmap",
    "mapping.allowed_sip_domains",
    "mapping.allowed_xmpp_domains",
];

/// The whole effective configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub sip: SipConfig,
    pub xmpp: XmppConfig,
    pub mapping: MappingSection,
    pub presence: PresenceConfig,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub runtime: RuntimeConfig,
    pub im: ImSection,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SipConfig {
    /// Local UDP and TCP listen address.
    pub listen: String,
    /// The SIP presence server (Kamailio) our requests go to.
    pub server_address: String,
    /// SIP domain under which XMPP users appear (`alice*xmpp.org@gateway_domain`).
    pub gateway_domain: String,
    /// `host:port` put in Contact; empty means `listen`.
    pub contact_host: String,
    /// Transport of requests we originate: `udp` or `tcp` (a `sips:` or `;transport=tls`
    /// `server_address` means TLS whatever this says).
    pub transport: String,
    /// IP addresses allowed to send us SIP requests (the Kamailio proxy); empty = anyone.
    /// Requests from others get 403.
    pub trusted_peers: Vec<String>,
    /// RFC 3261 T1 in milliseconds (retransmission and timeout timers scale with it).
    pub t1_ms: u64,
    /// Address of the SIP-over-TLS listener; empty: none.
    pub tls_listen: String,
    /// PEM certificate chain of the TLS listener (reloaded on SIGHUP).
    pub tls_cert: String,
    /// PEM private key of the TLS listener (reloaded on SIGHUP).
    pub tls_key: String,
    /// PEM CA bundle that peers' certificates are verified against; empty: the system's.
    /// When set, reloaded on SIGHUP (new outbound handshakes use it).
    pub tls_ca: String,
    /// Verify peers' certificates on outbound TLS; `false` is for labs only (logged loudly).
    pub tls_verify: bool,
    /// DNS servers (`ip` or `ip:port`) for locating a `server_address` given as a name
    /// (RFC 3263); empty = the system's resolv.conf.
    pub dns_servers: Vec<String>,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: "127.0.0.1:5080".into(),
            server_address: "sip:127.0.0.1:5060".into(),
            gateway_domain: "sip-xmpp.localhost".into(),
            contact_host: String::new(),
            transport: "udp".into(),
            trusted_peers: Vec::new(),
            t1_ms: 500,
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_ca: String::new(),
            tls_verify: true,
            dns_servers: Vec::new(),
        }
    }
}

/// A `sip.dns_servers` entry: `ip`, `ip:port` or `[v6]:port` (port 53 by default).
pub fn parse_dns_server(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

impl SipConfig {
    /// The validated listen address (falls back to the default if called before validation).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5080)))
    }
    /// Requests we originate go over TLS: a `sips:` or `;transport=tls` `server_address`
    /// (RFC 3261 §26.2, RFC 5630).
    pub fn outbound_tls(&self) -> bool {
        pua_xmpp::sip::encode::uri_host_port(&self.server_address)
            .is_some_and(|hp| hp.sips || hp.transport.as_deref() == Some("tls"))
    }

    /// The transport of requests we originate: `udp`, `tcp` or `tls`.
    pub fn effective_transport(&self) -> &str {
        if self.outbound_tls() {
            "tls"
        } else {
            &self.transport
        }
    }

    /// The validated TLS listen address, if one is configured.
    pub fn tls_listen_addr(&self) -> Option<SocketAddr> {
        if self.tls_listen.is_empty() {
            None
        } else {
            self.tls_listen.parse().ok()
        }
    }

    /// `host:port` for Contact headers.
    pub fn contact(&self) -> &str {
        if self.contact_host.is_empty() && self.outbound_tls() && !self.tls_listen.is_empty() {
            &self.tls_listen
        } else if self.contact_host.is_empty() {
            &self.listen
        } else {
            &self.contact_host
        }
    }
}

/// `Debug` is written by hand so the secret never reaches a log line.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct XmppConfig {
    /// The component name (XEP-0114 stream `to`), also the JID domain of SIP users.
    pub component_domain: String,
    /// `host:port` of the XMPP server's component port.
    pub server: String,
    /// The component secret; never logged.
    pub secret: String,
    pub keepalive_secs: u64,
    /// Outbound stanzas kept while the link is down.
    pub queue_limit: usize,
    pub reconnect_max_secs: u64,
}

impl fmt::Debug for XmppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XmppConfig")
            .field("component_domain", &self.component_domain)
            .field("server", &self.server)
            .field("secret", &"<redacted>")
            .field("keepalive_secs", &self.keepalive_secs)
            .field("queue_limit", &self.queue_limit)
            .field("reconnect_max_secs", &self.reconnect_max_secs)
            .finish()
    }
}

impl Default for XmppConfig {
    fn default() -> Self {
        XmppConfig {
            component_domain: "sip.localhost".into(),
            server: "127.0.0.1:5347".into(),
            secret: DEFAULT_SECRET.into(),
            keepalive_secs: 60,
            queue_limit: 10_000,
            reconnect_max_secs: 60,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct MappingSection {
    pub domain_separator: String,
    /// `sip_domain=xmpp_domain` entries; non-empty switches to the gwmap strategy.
    pub gwmap: Vec<String>,
    /// Empty means any.
    pub allowed_sip_domains: Vec<String>,
    /// Empty means any.
    pub allowed_xmpp_domains: Vec<String>,
}

impl Default for MappingSection {
    fn default() -> Self {
        MappingSection {
            domain_separator: "*".into(),
            gwmap: Vec::new(),
            allowed_sip_domains: Vec::new(),
            allowed_xmpp_domains: Vec::new(),
        }
    }
}

impl MappingSection {
    /// The separator as a char (validated to be exactly one).
    pub fn separator(&self) -> char {
        self.domain_separator.chars().next().unwrap_or('*')
    }
    /// gwmap entries as `(sip_domain, xmpp_domain)` pairs; malformed entries are skipped
    /// (validation rejects them first).
    pub fn gwmap_pairs(&self) -> Vec<(String, String)> {
        self.gwmap
            .iter()
            .filter_map(|e| {
                let (s, x) = e.split_once('=')?;
                Some((s.trim().to_owned(), x.trim().to_owned()))
            })
            .collect()
    }
}

/// How SIP watchers learn XMPP presence (§ design): we are the notifier, or we PUBLISH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceMode {
    Notifier,
    Pua,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// `notifier` or `pua`.
    pub mode: String,
    pub subscribe_expires: u32,
    pub notify_min_interval_secs: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            mode: "notifier".into(),
            subscribe_expires: 3600,
            notify_min_interval_secs: 5,
        }
    }
}

impl PresenceConfig {
    pub fn mode(&self) -> PresenceMode {
        if self.mode == "pua" {
            PresenceMode::Pua
        } else {
            PresenceMode::Notifier
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct StoreConfig {
    /// The SQLite file; used when `url` is empty.
    pub path: String,
    /// A PostgreSQL connection string (`postgres://user:password@host:port/db`); when set,
    /// the store is there and `path` must be empty or left at its default.
    pub url: String,
    /// Active/standby on `url` (issue 17): serve only while holding the lease named after
    /// `xmpp.component_domain`; a standby binds and connects nothing until then.
    pub lease: bool,
    /// This instance's name in the lease row; empty: host, pid and start time.
    pub instance: String,
    /// Milliseconds an acquire or renewal holds the lease (the database's clock); an active
    /// instance stops serving 5/6 of this after its last confirmed renewal left, and a
    /// standby takes over within about this plus `lease_retry_ms` of the active one's death.
    pub lease_ttl_ms: u64,
    /// Milliseconds between renewals while active.
    pub lease_renew_ms: u64,
    /// Milliseconds between a standby's acquire attempts, and between retries of a failed
    /// request.
    pub lease_retry_ms: u64,
    /// Milliseconds a subscriber pair's changed record waits for more changes before it is
    /// written (a set-up changes it three to four times within milliseconds). Shutdown writes
    /// what waits; a crash loses at most this plus the store's 20 ms batch.
    pub coalesce_ms: u64,
    /// PostgreSQL connections of the store (`url`): a takeover loads its snapshot over all of
    /// them, and a large batch is split over them by record key. 1 to 64.
    pub pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: DEFAULT_STORE_PATH.into(),
            url: String::new(),
            lease: false,
            instance: String::new(),
            lease_ttl_ms: 3000,
            lease_renew_ms: 1000,
            lease_retry_ms: 500,
            coalesce_ms: 20,
            pool_size: 4,
        }
    }
}

impl StoreConfig {
    /// The lease machine's timing (issue 17).
    pub fn lease_config(&self) -> pua_xmpp::lease::LeaseConfig {
        pua_xmpp::lease::LeaseConfig::from_millis(
            self.lease_ttl_ms,
            self.lease_renew_ms,
            self.lease_retry_ms,
        )
    }

    /// The lease keys (each already in range): a renewal plus one retry inside the part of the
    /// lease an active instance counts on (5/6 of it), so one lost request does not end it.
    fn check_lease_timing(&self) -> Result<(), ConfigError> {
        let usable = self.lease_config().usable().as_millis();
        let need = u128::from(self.lease_renew_ms) + u128::from(self.lease_retry_ms);
        if need >= usable {
            return Err(invalid(
                "store.lease_renew_ms",
                format!(
                    "{} + store.lease_retry_ms {} must be under {} (5/6 of \
                     store.lease_ttl_ms {}): a renewal and one retry must fit before the \
                     lease counts as lost",
                    self.lease_renew_ms, self.lease_retry_ms, usable, self.lease_ttl_ms
                ),
            ));
        }
        Ok(())
    }
}

/// The HTTP listener and who may use it. `Debug` is written by hand so the token never reaches
/// a log line.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpConfig {
    pub listen: String,
    /// Bearer token required on every endpoint but `/health`; empty = none. Never logged;
    /// keep it out of files with `PUA_XMPP__HTTP__TOKEN` or `token_file`.
    pub token: String,
    /// A file holding the token (surrounding whitespace ignored); exclusive with `token`.
    pub token_file: String,
    /// Client IP addresses or CIDR prefixes allowed on every endpoint but `/health`;
    /// empty = any. Others get 403.
    pub allow: Vec<String>,
    /// PEM certificate chain; set with `tls_key` to serve HTTPS instead of HTTP.
    pub tls_cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9080".into(),
            token: String::new(),
            token_file: String::new(),
            allow: Vec::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("token", &redact(&self.token))
            .field("token_file", &self.token_file)
            .field("allow", &self.allow)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// `"<redacted>"` for a set secret, `""` for an unset one (so operators see which it is).
fn redact(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

impl HttpConfig {
    /// The bearer token from `token` or `token_file`; `None` when neither is set. Errors
    /// name the key and never contain the token.
    pub fn bearer_token(&self) -> Result<Option<String>, String> {
        let (key, token) = if !self.token.is_empty() {
            ("http.token", self.token.clone())
        } else if !self.token_file.is_empty() {
            let text = std::fs::read_to_string(&self.token_file)
                .map_err(|e| format!("http.token_file: cannot read {:?}: {e}", self.token_file))?;
            ("http.token_file", text.trim().to_owned())
        } else {
            return Ok(None);
        };
        crate::http::access::check_token(&token).map_err(|e| format!("{key}: token {e}"))?;
        Ok(Some(token))
    }

    /// Checks `[http]`: the listen address comes from the caller's `sock` check; this checks
    /// the token, the allow-list and the TLS files (read and parsed, so `check-config`
    /// catches a bad PEM).
    fn validate(&self) -> Result<(), ConfigError> {
        let err = |e: String| match e.split_once(": ") {
            Some((key, reason)) => invalid(key, reason),
            None => ConfigError::Other(e),
        };
        if !self.token.is_empty() && !self.token_file.is_empty() {
            return Err(invalid(
                "http.token_file",
                "set http.token or http.token_file, not both",
            ));
        }
        crate::http::access_from(self).map_err(err)?;
        match (self.tls_cert.is_empty(), self.tls_key.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => Err(invalid("http.tls_key", "must be set with http.tls_cert")),
            (true, false) => Err(invalid("http.tls_cert", "must be set with http.tls_key")),
            (false, false) => crate::http::tls::server_config(&self.tls_cert, &self.tls_key)
                .map(|_| ())
                .map_err(err),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins over it.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct LimitsConfig {
    pub max_sip_message: usize,
    pub max_pidf_body: usize,
    pub max_status_chars: usize,
    pub max_subscriptions: usize,
    pub max_subscriptions_per_user: usize,
    /// Largest inbound XMPP stanza; a larger one ends the component session (logged).
    pub max_stanza_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sip_message: 65536,
            max_pidf_body: 65536,
            max_status_chars: 1024,
            max_subscriptions: 1_000_000,
            max_subscriptions_per_user: 1000,
            max_stanza_bytes: 1 << 20,
        }
    }
}

/// Instant messaging (§10.5): XMPP `<message/>` ⇄ SIP MESSAGE. Which domains and peers are
/// served is the presence policy (`[mapping]` allow-lists, `sip.trusted_peers`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ImSection {
    /// `false`: MESSAGE gets 405 and `<message/>` `service-unavailable`.
    pub enabled: bool,
    /// Type of the stanzas made from MESSAGEs: `chat` or `normal` (no `type`, RFC 7572 §5).
    pub inbound_type: String,
    /// Adds the XMPP sender's resource to our From as `;gr=` (RFC 7572 §4 literally).
    pub from_gruu: bool,
    /// A XEP-0184 receipt on a 200 when the stanza asked for one.
    pub receipts: bool,
    /// Milliseconds a MESSAGE waits for an error stanza before its 202; 0 answers at once.
    pub bounce_wait_ms: u64,
    /// Largest message body, both ways, in octets.
    pub max_body_bytes: usize,
    /// Messages a second per sender and direction; 0 turns the limit off.
    pub rate_per_sender: u32,
    pub rate_burst: u32,
    /// MESSAGEs waiting per Request-URI behind the one in flight.
    pub queue_per_target: usize,
    /// MESSAGEs queued or in flight, all targets together; beyond it a message is refused
    /// (503 / `resource-constraint`). Bounds the memory a burst toward slow phones can take.
    pub queue_total: usize,
}

impl Default for ImSection {
    fn default() -> Self {
        let d = pua_xmpp::im::ImConfig::default();
        ImSection {
            enabled: d.enabled,
            inbound_type: "chat".into(),
            from_gruu: d.from_gruu,
            receipts: d.receipts,
            bounce_wait_ms: d.bounce_wait.as_millis() as u64,
            max_body_bytes: d.max_body_bytes,
            rate_per_sender: d.rate_per_sender,
            rate_burst: d.rate_burst,
            queue_per_target: d.queue_per_target,
            queue_total: d.queue_total,
        }
    }
}

impl ImSection {
    /// The core's settings; `trusted_sources`, `local_hosts`, `tcp_available` and
    /// `call_id_host` come from `[sip]` (see [`Config::im_config`]).
    pub fn core(&self) -> pua_xmpp::im::ImConfig {
        pua_xmpp::im::ImConfig {
            enabled: self.enabled,
            inbound_type: if self.inbound_type == "normal" {
                pua_xmpp::im::InboundType::Normal
            } else {
                pua_xmpp::im::InboundType::Chat
            },
            from_gruu: self.from_gruu,
            receipts: self.receipts,
            bounce_wait: std::time::Duration::from_millis(self.bounce_wait_ms),
            max_body_bytes: self.max_body_bytes,
            rate_per_sender: self.rate_per_sender,
            rate_burst: self.rate_burst,
            queue_per_target: self.queue_per_target,
            queue_total: self.queue_total,
            ..pua_xmpp::im::ImConfig::default()
        }
    }
}

/// Process lifecycle settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Upper bound, seconds, from SIGTERM/SIGINT to exit: in-flight SIP transactions get about
    /// half of it, then the XMPP stream is closed and the store flushed in what is left.
    pub shutdown_timeout_secs: u64,
    /// Threads for the actors, the main one included (it runs the sockets, the registry and one
    /// subscriber shard; each further thread is an actix arbiter with a shard and translators).
    /// 0 = one per core; 1 = everything on the main thread.
    pub threads: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shutdown_timeout_secs: 10,
            threads: 0,
        }
    }
}

impl RuntimeConfig {
    pub fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// A configuration error; `Display` starts with the dotted key when one is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read or is not TOML.
    File { path: String, reason: String },
    /// A key that no section defines (typo safety).
    UnknownKey { key: String },
    /// A known key with an unusable value.
    Invalid { key: String, reason: String },
    /// Anything the `config` crate reports without a key.
    Other(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::File { path, reason } => write!(f, "{path}: {reason}"),
            ConfigError::UnknownKey { key } => write!(f, "{key}: unknown key"),
            ConfigError::Invalid { key, reason } => write!(f, "{key}: {reason}"),
            ConfigError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Turns a `config` crate error into ours, lifting the key out of its message.
fn from_config_error(e: config::ConfigError) -> ConfigError {
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => invalid(
            &key,
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => invalid(&key, error.to_string()),
        config::ConfigError::FileParse { cause, uri } => ConfigError::File {
            path: uri.unwrap_or_default(),
            reason: cause.to_string(),
        },
        other => ConfigError::Other(other.to_string()),
    }
}

/// Collects the dotted leaf keys of a config tree.
fn leaf_keys(prefix: &str, map: &config::Map<String, config::Value>, out: &mut BTreeSet<String>) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match &v.kind {
            config::ValueKind::Table(t) => {
                out.insert(key.clone());
                leaf_keys(&key, t, out);
            }
            _ => {
                out.insert(key);
            }
        }
    }
}

impl Config {
    /// Defaults, then `path` (TOML) if given, then the process environment, then validation.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`] but with an explicit environment (tests; no global state).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        let defaults = config::Config::try_from(&Config::default()).map_err(from_config_error)?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(p) = path {
            if !p.is_file() {
                return Err(ConfigError::File {
                    path: p.display().to_string(),
                    reason: "no such file".into(),
                });
            }
            builder = builder.add_source(
                config::File::from(p)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // List keys are split here (comma-separated) so no other value is type-guessed:
        // `try_parsing` would turn a secret like "1e5" into a float.
        let mut lists = Vec::new();
        for key in LIST_KEYS {
            if let Some(v) = env.remove(&Config::env_name(key)) {
                let items: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                lists.push((key, items));
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        );
        for (key, items) in lists {
            builder = builder
                .set_override(key, items)
                .map_err(from_config_error)?;
        }
        let built = builder.build().map_err(from_config_error)?;
        Config::check_unknown_keys(&built)?;
        let cfg: Config = built.try_deserialize().map_err(from_config_error)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The defaults with one element in every list: `config` drops empty arrays when it
    /// serializes, which would hide their keys.
    fn key_template() -> Config {
        let mut t = Config::default();
        t.mapping.gwmap = vec!["a=b".into()];
        t.sip.trusted_peers = vec!["127.0.0.1".into()];
        t.sip.dns_servers = vec!["127.0.0.1".into()];
        t.mapping.allowed_sip_domains = vec!["a".into()];
        t.mapping.allowed_xmpp_domains = vec!["a".into()];
        t.http.allow = vec!["127.0.0.1".into()];
        t
    }

    /// Every key of the merged sources must be one the defaults define.
    fn check_unknown_keys(built: &config::Config) -> Result<(), ConfigError> {
        let known_tree = config::Config::try_from(&Config::key_template())
            .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
            .map_err(from_config_error)?;
        let mut known = BTreeSet::new();
        leaf_keys("", &known_tree, &mut known);
        let got_tree = built
            .clone()
            .try_deserialize::<config::Map<String, config::Value>>()
            .map_err(from_config_error)?;
        let mut got = BTreeSet::new();
        leaf_keys("", &got_tree, &mut got);
        match got.difference(&known).next() {
            Some(k) => Err(ConfigError::UnknownKey { key: k.clone() }),
            None => Ok(()),
        }
    }

    /// Checks every value; the first problem is returned, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sock = |key: &str, v: &str| -> Result<(), ConfigError> {
            v.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
                invalid(
                    key,
                    format!(
                        "expected an IP address with port such as \"127.0.0.1:5080\", got {v:?}"
                    ),
                )
            })
        };
        let one_of = |key: &str, v: &str, allowed: &[&str]| -> Result<(), ConfigError> {
            if allowed.contains(&v) {
                Ok(())
            } else {
                let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
                Err(invalid(
                    key,
                    format!("expected {}, got {v:?}", list.join(" or ")),
                ))
            }
        };
        let range = |key: &str, v: u64, lo: u64, hi: u64| -> Result<(), ConfigError> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("expected a number from {lo} to {hi}, got {v}"),
                ))
            }
        };
        let domain = |key: &str, v: &str| -> Result<(), ConfigError> {
            if v.is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
            if v.contains(|c: char| c.is_whitespace() || "@/:*\"'<>&".contains(c)) {
                return Err(invalid(key, format!("expected a domain name, got {v:?}")));
            }
            Ok(())
        };
        let host_port = |key: &str, v: &str| -> Result<(), ConfigError> {
            let ok = v
                .rsplit_once(':')
                .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
                .unwrap_or(false);
            if ok {
                Ok(())
            } else {
                Err(invalid(key, format!("expected host:port, got {v:?}")))
            }
        };

        let s = &self.sip;
        sock("sip.listen", &s.listen)?;
        let sa = &s.server_address;
        let rest = sa
            .strip_prefix("sip:")
            .or_else(|| sa.strip_prefix("sips:"))
            .ok_or_else(|| {
                invalid(
                    "sip.server_address",
                    format!("expected a sip: URI, got {sa:?}"),
                )
            })?;
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(invalid(
                "sip.server_address",
                format!("expected a sip: URI with a host, got {sa:?}"),
            ));
        }
        if pua_xmpp::sip::encode::uri_host_port(sa).is_none() {
            return Err(invalid(
                "sip.server_address",
                format!("expected sip:host[:port][;transport=udp|tcp] (host: a name or an IP literal), got {sa:?}"),
            ));
        }
        for d in &s.dns_servers {
            if parse_dns_server(d).is_none() {
                return Err(invalid(
                    "sip.dns_servers",
                    format!("expected ip or ip:port, got {d:?}"),
                ));
            }
        }
        domain("sip.gateway_domain", &s.gateway_domain)?;
        if !s.contact_host.is_empty() {
            host_port("sip.contact_host", &s.contact_host)?;
        }
        one_of("sip.transport", &s.transport, &["udp", "tcp"])?;
        if !s.tls_listen.is_empty() {
            sock("sip.tls_listen", &s.tls_listen)?;
            if s.tls_cert.is_empty() {
                return Err(invalid("sip.tls_cert", "required with sip.tls_listen"));
            }
            if s.tls_key.is_empty() {
                return Err(invalid("sip.tls_key", "required with sip.tls_listen"));
            }
        }
        if s.outbound_tls() && s.tls_listen.is_empty() {
            // Our Contact must then be a TLS address too, or peers would answer in plain text.
            return Err(invalid(
                "sip.tls_listen",
                format!(
                    "required when requests go over TLS (sip.server_address {:?})",
                    s.server_address
                ),
            ));
        }

        let x = &self.xmpp;
        domain("xmpp.component_domain", &x.component_domain)?;
        if xmpp_parsers::jid::BareJid::new(&x.component_domain).is_err() {
            return Err(invalid(
                "xmpp.component_domain",
                format!("not a valid JID domain: {:?}", x.component_domain),
            ));
        }
        host_port("xmpp.server", &x.server)?;
        if x.secret.is_empty() {
            return Err(invalid("xmpp.secret", "must not be empty"));
        }
        if x.secret.contains(['&', '<', '>', '\'', '"']) {
            // XEP-0114 servers disagree on escaping these in the handshake hash (§8).
            return Err(invalid(
                "xmpp.secret",
                "must not contain & < > ' \" (servers hash them differently)",
            ));
        }
        range("xmpp.keepalive_secs", x.keepalive_secs, 1, 3600)?;
        range("xmpp.queue_limit", x.queue_limit as u64, 1, 10_000_000)?;
        range("xmpp.reconnect_max_secs", x.reconnect_max_secs, 1, 3600)?;

        let m = &self.mapping;
        if m.domain_separator.chars().count() != 1 {
            return Err(invalid(
                "mapping.domain_separator",
                format!(
                    "expected exactly one character, got {:?}",
                    m.domain_separator
                ),
            ));
        }
        for e in &m.gwmap {
            match e.split_once('=') {
                Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => {
                    domain("mapping.gwmap", a.trim())?;
                    domain("mapping.gwmap", b.trim())?;
                }
                _ => {
                    return Err(invalid(
                        "mapping.gwmap",
                        format!("expected \"sip_domain=xmpp_domain\", got {e:?}"),
                    ))
                }
            }
        }
        for d in &m.allowed_sip_domains {
            domain("mapping.allowed_sip_domains", d)?;
        }
        range("sip.t1_ms", self.sip.t1_ms, 10, 5000)?;
        for ip in &self.sip.trusted_peers {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "sip.trusted_peers",
                    format!("expected IP addresses such as \"127.0.0.1\", got {ip:?}"),
                ));
            }
        }
        for d in &m.allowed_xmpp_domains {
            domain("mapping.allowed_xmpp_domains", d)?;
        }

        let p = &self.presence;
        one_of("presence.mode", &p.mode, &["notifier", "pua"])?;
        range(
            "presence.subscribe_expires",
            p.subscribe_expires.into(),
            60,
            604_800,
        )?;
        range(
            "presence.notify_min_interval_secs",
            p.notify_min_interval_secs,
            0,
            3600,
        )?;

        let st = &self.store;
        if st.url.is_empty() && st.path.is_empty() {
            return Err(invalid(
                "store.path",
                "must not be empty (or set store.url for PostgreSQL)",
            ));
        }
        if st.lease && st.url.is_empty() {
            return Err(invalid(
                "store.lease",
                "needs store.url: the lease lives in the shared PostgreSQL database",
            ));
        }
        if !st.url.is_empty() {
            if !st.path.is_empty() && st.path != DEFAULT_STORE_PATH {
                return Err(invalid(
                    "store.url",
                    format!(
                        "set either store.path (SQLite) or store.url (PostgreSQL), not both \
                         (store.path is {:?})",
                        st.path
                    ),
                ));
            }
            if let Err(e) = st.url.parse::<tokio_postgres::Config>() {
                return Err(invalid(
                    "store.url",
                    format!(
                        "not a PostgreSQL connection string ({e}): {:?}",
                        crate::store::postgres::redact_url(&st.url)
                    ),
                ));
            }
        }
        range("store.coalesce_ms", self.store.coalesce_ms, 0, 10_000)?;
        range("store.lease_ttl_ms", st.lease_ttl_ms, 300, 600_000)?;
        range("store.lease_renew_ms", st.lease_renew_ms, 50, 600_000)?;
        range("store.lease_retry_ms", st.lease_retry_ms, 50, 600_000)?;
        st.check_lease_timing()?;
        range("store.pool_size", self.store.pool_size as u64, 1, 64)?;
        sock("http.listen", &self.http.listen)?;
        self.http.validate()?;

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!("not a log filter ({e}): {:?}", self.log.level),
            ));
        }
        one_of("log.format", &self.log.format, &["text", "json"])?;

        let l = &self.limits;
        const MIB16: u64 = 16 * 1024 * 1024;
        range(
            "limits.max_sip_message",
            l.max_sip_message as u64,
            1500,
            MIB16,
        )?;
        range(
            "limits.max_pidf_body",
            l.max_pidf_body as u64,
            256,
            l.max_sip_message as u64,
        )?;
        range(
            "limits.max_status_chars",
            l.max_status_chars as u64,
            1,
            65536,
        )?;
        range(
            "limits.max_subscriptions",
            l.max_subscriptions as u64,
            1,
            100_000_000,
        )?;
        range(
            "limits.max_subscriptions_per_user",
            l.max_subscriptions_per_user as u64,
            1,
            l.max_subscriptions as u64,
        )?;
        range(
            "limits.max_stanza_bytes",
            l.max_stanza_bytes as u64,
            1024,
            64 << 20,
        )?;
        range(
            "runtime.shutdown_timeout_secs",
            self.runtime.shutdown_timeout_secs,
            1,
            300,
        )?;
        range("runtime.threads", self.runtime.threads, 0, 256)?;
        let im = &self.im;
        one_of("im.inbound_type", &im.inbound_type, &["chat", "normal"])?;
        range("im.bounce_wait_ms", im.bounce_wait_ms, 0, 10_000)?;
        range(
            "im.max_body_bytes",
            im.max_body_bytes as u64,
            1,
            (l.max_sip_message as u64).min(1 << 20),
        )?;
        range(
            "im.rate_per_sender",
            u64::from(im.rate_per_sender),
            0,
            100_000,
        )?;
        range("im.rate_burst", u64::from(im.rate_burst), 1, 1_000_000)?;
        range("im.queue_per_target", im.queue_per_target as u64, 0, 10_000)?;
        range("im.queue_total", im.queue_total as u64, 1, 10_000_000)?;
        Ok(())
    }

    /// The instant-messaging core's settings: `[im]`, with the trusted sources from
    /// `sip.trusted_peers` and the hosts that mean the gateway from `sip.listen`.
    pub fn im_config(&self) -> pua_xmpp::im::ImConfig {
        let listen = self.sip.listen_addr();
        let mut local_hosts = vec![listen.ip().to_string().to_ascii_lowercase()];
        if let Some(hp) =
            pua_xmpp::sip::encode::uri_host_port(&format!("sip:{}", self.sip.contact()))
        {
            let h = hp.host.to_ascii_lowercase();
            if !local_hosts.contains(&h) {
                local_hosts.push(h);
            }
        }
        pua_xmpp::im::ImConfig {
            trusted_sources: self
                .sip
                .trusted_peers
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
            local_hosts,
            call_id_host: listen.ip().to_string(),
            ..self.im.core()
        }
    }

    /// True when the secret is the shipped default (anyone can impersonate the component).
    pub fn uses_default_secret(&self) -> bool {
        self.xmpp.secret == DEFAULT_SECRET
    }

    /// The effective configuration as TOML, with the secrets (`xmpp.secret`, `http.token`)
    /// replaced by `"<redacted>"`.
    pub fn redacted(&self) -> String {
        let mut t = TomlOut::default();
        let s = &self.sip;
        t.section("sip");
        t.str("listen", &s.listen);
        t.str("server_address", &s.server_address);
        t.str("gateway_domain", &s.gateway_domain);
        t.str("contact_host", &s.contact_host);
        t.str("transport", &s.transport);
        t.list("trusted_peers", &self.sip.trusted_peers);
        t.num("t1_ms", self.sip.t1_ms);
        t.str("tls_listen", &s.tls_listen);
        t.str("tls_cert", &s.tls_cert);
        t.str("tls_key", &s.tls_key);
        t.str("tls_ca", &s.tls_ca);
        t.bool("tls_verify", s.tls_verify);
        t.list("dns_servers", &self.sip.dns_servers);
        let x = &self.xmpp;
        t.section("xmpp");
        t.str("component_domain", &x.component_domain);
        t.str("server", &x.server);
        t.str("secret", "<redacted>");
        t.num("keepalive_secs", x.keepalive_secs);
        t.num("queue_limit", x.queue_limit);
        t.num("reconnect_max_secs", x.reconnect_max_secs);
        let m = &self.mapping;
        t.section("mapping");
        t.str("domain_separator", &m.domain_separator);
        t.list("gwmap", &m.gwmap);
        t.list("allowed_sip_domains", &m.allowed_sip_domains);
        t.list("allowed_xmpp_domains", &m.allowed_xmpp_domains);
        let p = &self.presence;
        t.section("presence");
        t.str("mode", &p.mode);
        t.num("subscribe_expires", p.subscribe_expires);
        t.num("notify_min_interval_secs", p.notify_min_interval_secs);
        t.section("store");
        t.str("path", &self.store.path);
        t.str("url", &crate::store::postgres::redact_url(&self.store.url));
        t.bool("lease", self.store.lease);
        t.str("instance", &self.store.instance);
        t.num("lease_ttl_ms", self.store.lease_ttl_ms);
        t.num("lease_renew_ms", self.store.lease_renew_ms);
        t.num("lease_retry_ms", self.store.lease_retry_ms);
        t.num("pool_size", self.store.pool_size);
        let h = &self.http;
        t.section("http");
        t.str("listen", &h.listen);
        t.str("token", redact(&h.token));
        t.str("token_file", &h.token_file);
        t.list("allow", &h.allow);
        t.str("tls_cert", &h.tls_cert);
        t.str("tls_key", &h.tls_key);
        t.section("log");
        t.str("level", &self.log.level);
        t.str("format", &self.log.format);
        let l = &self.limits;
        t.section("limits");
        t.num("max_sip_message", l.max_sip_message);
        t.num("max_pidf_body", l.max_pidf_body);
        t.num("max_status_chars", l.max_status_chars);
        t.num("max_subscriptions", l.max_subscriptions);
        t.num("max_subscriptions_per_user", l.max_subscriptions_per_user);
        t.num("max_stanza_bytes", l.max_stanza_bytes);
        let im = &self.im;
        t.section("im");
        t.bool("enabled", im.enabled);
        t.str("inbound_type", &im.inbound_type);
        t.bool("from_gruu", im.from_gruu);
        t.bool("receipts", im.receipts);
        t.num("bounce_wait_ms", im.bounce_wait_ms);
        t.num("max_body_bytes", im.max_body_bytes);
        t.num("rate_per_sender", im.rate_per_sender);
        t.num("rate_burst", im.rate_burst);
        t.num("queue_per_target", im.queue_per_target);
        t.num("queue_total", im.queue_total);
        t.section("runtime");
        t.num("shutdown_timeout_secs", self.runtime.shutdown_timeout_secs);
        t.num("threads", self.runtime.threads);
        t.out
    }

    /// The environment variable that overrides `section.key`.
    pub fn env_name(key: &str) -> String {
        format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase())
    }

    /// All dotted keys (for docs and the example file test).
    pub fn keys() -> Vec<String> {
        let mut out = BTreeSet::new();
        if let Ok(tree) = config::Config::try_from(&Config::key_template())
            .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
        {
            leaf_keys("", &tree, &mut out);
        }
        let tables: BTreeMap<&str, ()> = [
            "sip", "xmpp", "mapping", "presence", "store", "http", "log", "limits", "runtime", "im",
        ]
        .into_iter()
        .map(|s| (s, ()))
        .collect();
        out.into_iter()
            .filter(|k| !tables.contains_key(k.as_str()))
            .collect()
    }
}

/// Minimal TOML writer for [`Config::redacted`] (no `toml` dependency in this crate).
#[derive(Default)]
struct TomlOut {
    out: String,
}

impl TomlOut {
    fn section(&mut self, name: &str) {
        if !self.out.is_empty() {
            self.out.push('\n');
        }
        self.out.push('[');
        self.out.push_str(name);
        self.out.push_str("]\n");
    }
    fn quoted(&mut self, v: &str) {
        self.out.push('"');
        for c in v.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\t' => self.out.push_str("\\t"),
                '\r' => self.out.push_str("\\r"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    self.out.push_str(&format!("\\u{:04X}", c as u32))
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
    fn str(&mut self, k: &str, v: &str) {
        self.out.push_str(k);
        self.out.push_str(" = ");
        self.quoted(v);
        self.out.push('\n');
    }
    fn bool(&mut self, k: &str, v: bool) {
        self.num(k, v);
    }
    fn num(&mut self, k: &str, v: impl fmt::Display) {
        self.out.push_str(&format!("{k} = {v}\n"));
    }
    fn list(&mut self, k: &str, v: &[String]) {
        self.out.push_str(k);
        self.out.push_str(" = [");
        for (i, e) in v.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.quoted(e);
        }
        self.out.push_str("]\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_with_env(
            None,
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
    }

    /// `[sip]` TLS keys (issue 16): a sips: or ;transport=tls server_address means TLS and
    /// needs a TLS listener, which needs a certificate and a key; the keys are documented.
    #[test]
    fn sip_tls_keys_are_validated_and_a_sips_server_means_tls() {
        let d = Config::default();
        assert!(!d.sip.outbound_tls());
        assert!(d.sip.tls_verify);
        assert_eq!(d.sip.tls_listen_addr(), None);
        for key in ["tls_listen", "tls_cert", "tls_key", "tls_ca", "tls_verify"] {
            assert!(Config::keys().contains(&format!("sip.{key}")), "{key}");
        }
        let err = |pairs: &[(&str, &str)]| with_env(pairs).unwrap_err().to_string();
        assert_eq!(
            err(&[("PUA_XMPP__SIP__SERVER_ADDRESS", "sips:proxy.example.com")]),
            "sip.tls_listen: required when requests go over TLS (sip.server_address \"sips:proxy.example.com\")"
        );
        assert!(err(&[(
            "PUA_XMPP__SIP__SERVER_ADDRESS",
            "sip:[::1]:5061;transport=TLS"
        )])
        .starts_with("sip.tls_listen: required"));
        assert_eq!(
            err(&[("PUA_XMPP__SIP__TLS_LISTEN", "[::1]:5081")]),
            "sip.tls_cert: required with sip.tls_listen"
        );
        assert_eq!(
            err(&[
                ("PUA_XMPP__SIP__TLS_LISTEN", "[::1]:5081"),
                ("PUA_XMPP__SIP__TLS_CERT", "/c.pem")
            ]),
            "sip.tls_key: required with sip.tls_listen"
        );
        assert!(err(&[("PUA_XMPP__SIP__TLS_LISTEN", "localhost:5081")])
            .starts_with("sip.tls_listen: expected an IP address with port"));
        let c = with_env(&[
            ("PUA_XMPP__SIP__SERVER_ADDRESS", "sips:[::1]:5061"),
            ("PUA_XMPP__SIP__LISTEN", "[::1]:5080"),
            ("PUA_XMPP__SIP__TLS_LISTEN", "[::1]:5081"),
            ("PUA_XMPP__SIP__TLS_CERT", "/c.pem"),
            ("PUA_XMPP__SIP__TLS_KEY", "/k.pem"),
            ("PUA_XMPP__SIP__TLS_VERIFY", "false"),
        ])
        .unwrap();
        assert!(c.sip.outbound_tls());
        assert_eq!(c.sip.effective_transport(), "tls");
        assert_eq!(c.sip.contact(), "[::1]:5081");
        assert!(!c.sip.tls_verify);
        assert!(c.redacted().contains("tls_listen = \"[::1]:5081\"\n"));
        assert!(c.redacted().contains("tls_verify = false\n"));
    }

    #[test]
    fn shutdown_timeout_defaults_to_10_and_is_set_by_its_env_var() {
        assert_eq!(Config::default().runtime.shutdown_timeout_secs, 10);
        let c = with_env(&[("PUA_XMPP__RUNTIME__SHUTDOWN_TIMEOUT_SECS", "300")]).unwrap();
        assert_eq!(
            c.runtime.shutdown_timeout(),
            std::time::Duration::from_secs(300)
        );
        assert!(Config::keys().contains(&"runtime.shutdown_timeout_secs".to_owned()));
        assert!(c
            .redacted()
            .ends_with("\n[runtime]\nshutdown_timeout_secs = 300\nthreads = 0\n"));
    }

    #[test]
    fn shutdown_timeout_outside_1_to_300_names_the_key() {
        for v in ["0", "301"] {
            assert_eq!(
                with_env(&[("PUA_XMPP__RUNTIME__SHUTDOWN_TIMEOUT_SECS", v)])
                    .unwrap_err()
                    .to_string(),
                format!("runtime.shutdown_timeout_secs: expected a number from 1 to 300, got {v}")
            );
        }
    }

    #[test]
    fn threads_default_to_0_meaning_one_per_core_and_outside_0_to_256_name_the_key() {
        assert_eq!(Config::default().runtime.threads, 0);
        let c = with_env(&[("PUA_XMPP__RUNTIME__THREADS", "1")]).unwrap();
        assert_eq!(c.runtime.threads, 1);
        assert_eq!(
            with_env(&[("PUA_XMPP__RUNTIME__THREADS", "257")])
                .unwrap_err()
                .to_string(),
            "runtime.threads: expected a number from 0 to 256, got 257"
        );
    }

    #[test]
    fn dns_servers_and_named_server_address() {
        let c = with_env(&[
            ("PUA_XMPP__SIP__SERVER_ADDRESS", "sip:sip.example.com"),
            ("PUA_XMPP__SIP__DNS_SERVERS", "127.0.0.16:10053,192.0.2.53"),
        ])
        .unwrap();
        let parsed: Vec<_> = c
            .sip
            .dns_servers
            .iter()
            .filter_map(|d| parse_dns_server(d))
            .collect();
        assert_eq!(
            parsed,
            vec![
                "127.0.0.16:10053".parse::<SocketAddr>().unwrap(),
                "192.0.2.53:53".parse().unwrap()
            ]
        );
        assert!(c
            .redacted()
            .contains("\ndns_servers = [\"127.0.0.16:10053\", \"192.0.2.53\"]\n"));
        assert_eq!(
            with_env(&[("PUA_XMPP__SIP__DNS_SERVERS", "ns.example.com")])
                .unwrap_err()
                .to_string(),
            "sip.dns_servers: expected ip or ip:port, got \"ns.example.com\""
        );
        assert!(
            with_env(&[("PUA_XMPP__SIP__SERVER_ADDRESS", "sip:bad_host")])
                .unwrap_err()
                .to_string()
                .starts_with("sip.server_address: ")
        );
    }
}
