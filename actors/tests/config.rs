//! Configuration loading: defaults, file, environment, validation errors that name the key,
//! and the `check-config` command of the built binary.

use pua_xmpp_actors::config::{Config, ConfigError, PresenceMode};
use std::path::PathBuf;
use std::process::Command;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

mod common;
use common::{env, file};

fn load_err(body: &str, name: &str) -> String {
    let p = file(name, body);
    Config::load_with_env(Some(&p), no_env())
        .unwrap_err()
        .to_string()
}

#[test]
fn defaults_without_file_target_localhost_servers() {
    let c = Config::load_with_env(None, no_env()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.sip.listen, "127.0.0.1:5080");
    assert_eq!(c.sip.server_address, "sip:127.0.0.1:5060");
    assert_eq!(c.sip.gateway_domain, "sip-xmpp.localhost");
    assert_eq!(c.sip.contact(), "127.0.0.1:5080");
    assert_eq!(c.sip.transport, "udp");
    assert_eq!(c.xmpp.component_domain, "sip.localhost");
    assert_eq!(c.xmpp.server, "127.0.0.1:5347");
    assert_eq!(c.xmpp.secret, "secret");
    assert_eq!(
        (
            c.xmpp.keepalive_secs,
            c.xmpp.queue_limit,
            c.xmpp.reconnect_max_secs
        ),
        (60, 10000, 60)
    );
    assert_eq!(c.mapping.separator(), '*');
    assert_eq!(c.mapping.gwmap, Vec::<String>::new());
    assert_eq!(c.presence.mode(), PresenceMode::Notifier);
    assert_eq!(
        (
            c.presence.subscribe_expires,
            c.presence.notify_min_interval_secs
        ),
        (3600, 5)
    );
    assert_eq!(c.store.path, "pua-xmpp.db");
    assert_eq!(c.http.listen, "127.0.0.1:9080");
    assert_eq!(
        (c.log.level.as_str(), c.log.format.as_str()),
        ("info", "text")
    );
    assert_eq!(c.limits.max_sip_message, 65536);
    assert_eq!(c.limits.max_subscriptions_per_user, 1000);
    assert!(c.uses_default_secret());
}

#[test]
fn file_then_env_override() {
    let p = file(
        "override.toml",
        "[xmpp]\nsecret = \"from-file\"\ncomponent_domain = \"sip.example.net\"\n\
         [presence]\nmode = \"pua\"\n[mapping]\ngwmap = [\"sip.example.com=xmpp.example.com\"]\n",
    );
    let c = Config::load_with_env(Some(&p), no_env()).unwrap();
    assert_eq!(c.xmpp.secret, "from-file");
    assert_eq!(c.xmpp.component_domain, "sip.example.net");
    assert_eq!(c.presence.mode(), PresenceMode::Pua);
    assert!(!c.uses_default_secret());

    let c = Config::load_with_env(
        Some(&p),
        env(&[
            ("PUA_XMPP__XMPP__SECRET", "from-env"),
            ("PUA_XMPP__XMPP__KEEPALIVE_SECS", "30"),
            ("PUA_XMPP__STORE__COALESCE_MS", "5"),
            ("PUA_XMPP__SIP__LISTEN", "0.0.0.0:5090"),
            ("PUA_XMPP__MAPPING__GWMAP", "a.test=b.test, c.test=d.test"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.xmpp.secret, "from-env");
    assert_eq!(c.xmpp.keepalive_secs, 30);
    assert_eq!(c.store.coalesce_ms, 5);
    assert_eq!(c.sip.listen, "0.0.0.0:5090");
    assert_eq!(c.xmpp.component_domain, "sip.example.net");
    assert_eq!(
        c.mapping.gwmap_pairs(),
        vec![
            ("a.test".to_owned(), "b.test".to_owned()),
            ("c.test".to_owned(), "d.test".to_owned())
        ]
    );
}

#[test]
fn env_secret_that_looks_like_a_number_stays_a_string() {
    let c = Config::load_with_env(None, env(&[("PUA_XMPP__XMPP__SECRET", "1e5")])).unwrap();
    assert_eq!(c.xmpp.secret, "1e5");
}

#[test]
fn bad_values_name_the_key() {
    assert_eq!(
        load_err("[presence]\nmode = \"foo\"\n", "mode.toml"),
        "presence.mode: expected \"notifier\" or \"pua\", got \"foo\""
    );
    assert_eq!(
        load_err("[sip]\nlisten = \"localhost\"\n", "listen.toml"),
        "sip.listen: expected an IP address with port such as \"127.0.0.1:5080\", got \"localhost\""
    );
    assert_eq!(
        load_err("[sip]\nserver_address = \"127.0.0.1:5060\"\n", "sa.toml"),
        "sip.server_address: expected a sip: URI, got \"127.0.0.1:5060\""
    );
    assert_eq!(
        load_err("[mapping]\ndomain_separator = \"**\"\n", "sep.toml"),
        "mapping.domain_separator: expected exactly one character, got \"**\""
    );
    assert_eq!(
        load_err("[xmpp]\ncomponent_domain = \"\"\n", "dom.toml"),
        "xmpp.component_domain: must not be empty"
    );
    assert_eq!(
        load_err("[log]\nformat = \"xml\"\n", "fmt.toml"),
        "log.format: expected \"text\" or \"json\", got \"xml\""
    );
    assert_eq!(
        load_err("[xmpp]\nkeepalive_secs = 0\n", "ka.toml"),
        "xmpp.keepalive_secs: expected a number from 1 to 3600, got 0"
    );
    assert_eq!(
        load_err("[store]\ncoalesce_ms = 60000\n", "co.toml"),
        "store.coalesce_ms: expected a number from 0 to 10000, got 60000"
    );
    assert_eq!(
        load_err("[xmpp]\nkeepalive_secs = \"often\"\n", "ka2.toml"),
        "xmpp.keepalive_secs: invalid type: string \"often\", expected an integer"
    );
    assert_eq!(
        load_err("[mapping]\ngwmap = [\"nodelimiter\"]\n", "gw.toml"),
        "mapping.gwmap: expected \"sip_domain=xmpp_domain\", got \"nodelimiter\""
    );
    assert_eq!(
        load_err("[xmpp]\nsecret = \"a&b\"\n", "sec.toml"),
        "xmpp.secret: must not contain & < > ' \" (servers hash them differently)"
    );
    let e = Config::load_with_env(None, env(&[("PUA_XMPP__SIP__TRANSPORT", "sctp")])).unwrap_err();
    assert_eq!(
        e,
        ConfigError::Invalid {
            key: "sip.transport".into(),
            reason: "expected \"udp\" or \"tcp\", got \"sctp\"".into()
        }
    );
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    assert_eq!(
        load_err("[xmpp]\nsecrt = \"x\"\n", "typo.toml"),
        "xmpp.secrt: unknown key"
    );
    assert_eq!(
        load_err("[xmp]\nsecret = \"x\"\n", "typo2.toml"),
        "xmp: unknown key"
    );
    let e = Config::load_with_env(None, env(&[("PUA_XMPP__XMPP__SECRETT", "x")])).unwrap_err();
    assert_eq!(e.to_string(), "xmpp.secrett: unknown key");
}

#[test]
fn missing_file_is_an_error() {
    let p = PathBuf::from("/nonexistent/pua-xmpp.toml");
    assert_eq!(
        Config::load_with_env(Some(&p), no_env())
            .unwrap_err()
            .to_string(),
        "/nonexistent/pua-xmpp.toml: no such file"
    );
}

#[test]
fn redacted_output_hides_the_secret() {
    let mut c = Config::default();
    c.xmpp.secret = "hunter2".into();
    let out = c.redacted();
    assert!(!out.contains("hunter2"));
    assert!(out.contains("\n[xmpp]\ncomponent_domain = \"sip.localhost\"\nserver = \"127.0.0.1:5347\"\nsecret = \"<redacted>\"\nkeepalive_secs = 60\n"), "{out}");
}

#[test]
fn example_file_documents_every_key_and_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/pua-xmpp.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for key in Config::keys() {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            text.contains(&format!("{leaf} = ")),
            "config/pua-xmpp.toml lacks {key}"
        );
        assert!(
            text.contains(&Config::env_name(&key)),
            "config/pua-xmpp.toml lacks {}",
            Config::env_name(&key)
        );
    }
    assert_eq!(
        Config::load_with_env(Some(&path), no_env()).unwrap(),
        Config::default()
    );
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pua-xmpp"));
    // The test runner's environment must not leak into the checked configuration.
    for (k, _) in std::env::vars() {
        if k.starts_with("PUA_XMPP__") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn check_config_prints_effective_config_with_secret_redacted() {
    let p = file(
        "good.toml",
        "[xmpp]\nsecret = \"file-secret\"\n[presence]\nmode = \"pua\"\n",
    );
    let out = bin()
        .arg("check-config")
        .arg(&p)
        .env("PUA_XMPP__XMPP__SECRET", "env-secret-42")
        .env("PUA_XMPP__HTTP__LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut expected = Config::default();
    expected.presence.mode = "pua".into();
    expected.http.listen = "127.0.0.1:9999".into();
    expected.xmpp.secret = "env-secret-42".into();
    assert_eq!(stdout, expected.redacted());
    assert!(!stdout.contains("env-secret-42") && !stdout.contains("file-secret"));
    assert!(stdout.contains("secret = \"<redacted>\""));
}

#[test]
fn check_config_on_bad_file_exits_2_naming_the_key() {
    let p = file("bad.toml", "[presence]\nmode = \"foo\"\n");
    let out = bin().arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "pua-xmpp: invalid configuration: presence.mode: expected \"notifier\" or \"pua\", got \"foo\"\n"
    );
    assert_eq!(out.stdout, b"");
}

#[test]
fn starting_with_a_bad_config_exits_2() {
    let p = file("bad-run.toml", "[xmpp]\nsecrt = \"x\"\n");
    let out = bin().arg("--config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "pua-xmpp: invalid configuration: xmpp.secrt: unknown key\n"
    );
}

#[test]
fn version_and_help() {
    let out = bin().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("pua-xmpp {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = bin().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("pua-xmpp: SIP <-> XMPP presence gateway\n"));
}

#[test]
fn debug_output_never_contains_the_secret() {
    let mut c = Config::default();
    c.xmpp.secret = "hunter2".into();
    let cc = pua_xmpp_actors::component::ComponentConfig::from_xmpp(&c.xmpp);
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(!format!("{cc:?}").contains("hunter2"));
    assert!(format!("{cc:?}").contains("secret: \"<redacted>\""));
    assert_eq!(cc.reconnect_initial, std::time::Duration::from_secs(1));
    assert_eq!(cc.fatal_backoff, std::time::Duration::from_secs(30));
    assert_eq!(cc.reconnect_max, std::time::Duration::from_secs(60));
}

#[test]
fn im_section_defaults_env_overrides_validation_and_the_core_settings() {
    let c = Config::load_with_env(None, no_env()).unwrap();
    assert!(c.im.enabled);
    assert_eq!(c.im.inbound_type, "chat");
    assert_eq!(
        (
            c.im.max_body_bytes,
            c.im.rate_per_sender,
            c.im.rate_burst,
            c.im.queue_per_target,
            c.im.queue_total,
            c.im.bounce_wait_ms
        ),
        (8192, 10, 20, 50, 10_000, 500)
    );
    let c = Config::load_with_env(
        None,
        env(&[
            ("PUA_XMPP__IM__ENABLED", "false"),
            ("PUA_XMPP__IM__INBOUND_TYPE", "normal"),
            ("PUA_XMPP__IM__MAX_BODY_BYTES", "4000"),
            ("PUA_XMPP__IM__RATE_PER_SENDER", "0"),
            ("PUA_XMPP__IM__RATE_BURST", "5"),
            ("PUA_XMPP__IM__QUEUE_PER_TARGET", "7"),
            ("PUA_XMPP__IM__QUEUE_TOTAL", "300"),
            ("PUA_XMPP__SIP__TRUSTED_PEERS", "127.0.0.2,10.0.0.1"),
            ("PUA_XMPP__SIP__LISTEN", "127.0.0.3:5080"),
        ]),
    )
    .unwrap();
    let core = c.im_config();
    assert!(!core.enabled);
    assert_eq!(core.inbound_type, pua_xmpp::im::InboundType::Normal);
    assert_eq!(
        (
            core.max_body_bytes,
            core.rate_per_sender,
            core.rate_burst,
            core.queue_per_target,
            core.queue_total
        ),
        (4000, 0, 5, 7, 300)
    );
    assert_eq!(
        core.trusted_sources,
        vec![
            "127.0.0.2".parse::<std::net::IpAddr>().unwrap(),
            "10.0.0.1".parse().unwrap()
        ]
    );
    assert_eq!(core.local_hosts, vec!["127.0.0.3".to_owned()]);
    assert_eq!(
        load_err("[im]\ninbound_type = \"headline\"\n", "im1.toml"),
        "im.inbound_type: expected \"chat\" or \"normal\", got \"headline\""
    );
    assert_eq!(
        load_err("[im]\nmax_body_bytes = 0\n", "im2.toml"),
        "im.max_body_bytes: expected a number from 1 to 65536, got 0"
    );
    assert_eq!(
        load_err("[im]\nrate_burst = 0\n", "im3.toml"),
        "im.rate_burst: expected a number from 1 to 1000000, got 0"
    );
    assert_eq!(
        load_err("[im]\nbounce_wait_ms = 60000\n", "im4.toml"),
        "im.bounce_wait_ms: expected a number from 0 to 10000, got 60000"
    );
    assert_eq!(
        load_err("[im]\nqueue_total = 0\n", "im6.toml"),
        "im.queue_total: expected a number from 1 to 10000000, got 0"
    );
    assert_eq!(
        load_err("[im]\nenable = true\n", "im5.toml"),
        "im.enable: unknown key"
    );
}
