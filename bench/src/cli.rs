//! Command line: plain `--key value` pairs. Every address must be loopback, so the tool can
//! only ever load a gateway on the same machine.

use std::net::SocketAddr;
use std::path::PathBuf;

pub const USAGE: &str = "\
pua-xmpp-bench: load tool for SIP/XMPP presence gateways. It plays the XMPP server (XEP-0114
component listener) and the SIP presence server, so only the gateway is measured.

USAGE:
    pua-xmpp-bench --scenario a|b|im [options]

Scenario a: SIP presentities -> XMPP watchers (gateway as SIP subscriber; NOTIFY -> stanza).
Scenario b: XMPP presentities -> SIP watchers (gateway as notifier; stanza -> NOTIFY).
Scenario im: instant messages (chat <message/> <-> SIP MESSAGE), one or both ways.

OPTIONS (defaults in brackets):
    --n N                  subscriptions, or IM sender/recipient pairs (1:1) [1000]
    --xmpp-listen ADDR     component listener [127.0.0.1:15347]
    --component NAME       component domain the gateway claims [sip.bench.local]
    --secret S             component secret [secret]
    --sip-listen ADDR      our SIP UDP socket (the gateway's server_address) [127.0.0.1:15060]
    --gateway-sip ADDR     the gateway's SIP address (scenario b sends SUBSCRIBEs there)
                           [127.0.0.1:15080]
    --gateway-domain D     SIP domain of XMPP users at the gateway [gw.bench.local]
    --sip-domain D         domain of our SIP users [sip.bench]
    --xmpp-domain D        domain of our XMPP users [xmpp.bench]
    --separator C          user/domain separator of encoded addresses [*]
    --sip-transport T      udp or tcp: how scenario b sends its SUBSCRIBEs (we always
                           listen on both; scenario a follows the gateway's choice) [udp]
    --sip-tls-listen ADDR  also accept SIP over TLS there (scenario a with the gateway's
                           server_address = sips:ADDR); certificates from --tls-dir
    --tls-dir DIR          ca.pem, bench.pem/.key (ours), gw.pem/.key (the gateway's), all
                           made on first use for 127.0.0.1 and the listen IPs [bench-tls]
    --tls-init DIR         make DIR's certificates (if absent) for the IPs of the other
                           options and exit (run before the gateway starts: its tls_ca,
                           tls_cert and tls_key point there)
    --rates R1,R2,...      ladder of update rates per second (im: messages per second
                           in each direction measured) [5000,15000,50000]
    --im-direction D       im only: x2s (stanza -> MESSAGE), s2x (MESSAGE -> stanza)
                           or both (the rate each way at once) [x2s]
    --body-bytes B         im only: octets of every message body (1..=65536); a MESSAGE
                           over 1300 octets goes over TCP, as RFC 3261 §18.1.1 asks [100]
    --step-secs S          duration of one ladder step [5]
    --grace-secs S         wait after a step before counting losses [2]
    --setup-window W       subscriptions in flight during set-up [100]
    --setup-order O        spread or seq: watcher w(i*P mod N) subscribes i-th (spread:
                           JIDs and Call-IDs arrive in no particular order, as in production)
                           or w0, w1, ... (seq: sorted keys, kind to the gateway's store)
                           [spread]
    --setup-timeout S      give up the set-up after S seconds [60]
    --connect-timeout S    wait this long for the gateway's component connection [30]
    --tick-ms MS           pacing tick [1]
    --gateway-pid PID[,PID..]  read the gateway's CPU and RSS from /proc/PID (several pids
                           are summed: a multi-process server such as Kamailio)
    --json FILE            also write the results as JSON
";

/// A prime larger than any N the tool accepts: i -> i*P mod N is then a bijection of 0..N.
const SPREAD: u128 = 2_654_435_761;

impl Args {
    /// The watcher index subscribed `i`-th during the set-up.
    pub fn setup_index(&self, i: usize) -> usize {
        if !self.setup_spread || self.n == 0 {
            return i;
        }
        ((i as u128 * SPREAD) % self.n as u128) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Scenario {
    A,
    B,
    /// Instant messages (issue 15).
    Im,
}

/// Which way the IM scenario sends messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ImDir {
    /// XMPP -> SIP: chat stanzas on the component, MESSAGEs at our SIP side.
    X2s,
    /// SIP -> XMPP: MESSAGEs to the gateway, chat stanzas on the component.
    S2x,
    /// Both at once, each at the step's rate.
    Both,
}

/// Largest SIP request sent over UDP (RFC 3261 §18.1.1); IM MESSAGEs above it go over TCP.
pub const MAX_UDP_REQUEST: usize = 1300;
/// Octets of an IM MESSAGE besides its body (headers; about 420 with long domains).
pub const IM_HEAD_ALLOWANCE: usize = 500;

#[derive(Clone, Debug)]
pub struct Args {
    pub scenario: Scenario,
    pub n: usize,
    pub xmpp_listen: SocketAddr,
    pub component: String,
    pub secret: String,
    pub sip_listen: SocketAddr,
    pub gateway_sip: SocketAddr,
    pub gateway_domain: String,
    pub sip_domain: String,
    pub xmpp_domain: String,
    pub separator: char,
    pub sip_tcp: bool,
    pub rates: Vec<u64>,
    pub step_secs: f64,
    pub grace_secs: f64,
    pub setup_window: usize,
    /// Set-up in a spread (production-like) order rather than w0, w1, ...
    pub setup_spread: bool,
    pub setup_timeout_secs: f64,
    pub connect_timeout_secs: f64,
    pub tick_ms: u64,
    pub gateway_pid: Vec<u32>,
    pub json: Option<PathBuf>,
    pub im_dir: ImDir,
    pub body_bytes: usize,
    /// SIP over TLS listener (scenario a: the gateway's `sips:` server_address).
    pub sip_tls_listen: Option<SocketAddr>,
    /// Where the bench CA and the tool's and the gateway's certificates live (made if absent).
    pub tls_dir: PathBuf,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            scenario: Scenario::A,
            n: 1000,
            xmpp_listen: SocketAddr::from(([127, 0, 0, 1], 15347)),
            component: "sip.bench.local".into(),
            secret: "secret".into(),
            sip_listen: SocketAddr::from(([127, 0, 0, 1], 15060)),
            gateway_sip: SocketAddr::from(([127, 0, 0, 1], 15080)),
            gateway_domain: "gw.bench.local".into(),
            sip_domain: "sip.bench".into(),
            xmpp_domain: "xmpp.bench".into(),
            separator: '*',
            sip_tcp: false,
            rates: vec![5000, 15000, 50000],
            step_secs: 5.0,
            grace_secs: 2.0,
            setup_window: 100,
            setup_spread: true,
            setup_timeout_secs: 60.0,
            connect_timeout_secs: 30.0,
            tick_ms: 1,
            gateway_pid: Vec::new(),
            json: None,
            im_dir: ImDir::X2s,
            body_bytes: 100,
            sip_tls_listen: None,
            tls_dir: PathBuf::from("bench-tls"),
        }
    }
}

impl Args {
    /// IM: whether our MESSAGEs (S->X) go over TCP: asked for, or too large for UDP.
    pub fn im_tcp(&self) -> bool {
        self.sip_tcp || self.body_bytes + IM_HEAD_ALLOWANCE > MAX_UDP_REQUEST
    }

    /// IM: messages sent per second of a step at `rate` (both directions count).
    pub fn im_multiplier(&self) -> u64 {
        if self.im_dir == ImDir::Both {
            2
        } else {
            1
        }
    }

    /// IM: direction and pair index of message `seq`. With both directions, even numbers
    /// go XMPP -> SIP and odd ones SIP -> XMPP; consecutive messages of one direction go to
    /// consecutive pairs, so each pair sees rate / n messages a second each way.
    pub fn im_of(&self, seq: u64) -> (ImDir, usize) {
        let n = self.n.max(1) as u64;
        match self.im_dir {
            ImDir::Both if seq.is_multiple_of(2) => (ImDir::X2s, ((seq / 2) % n) as usize),
            ImDir::Both => (ImDir::S2x, ((seq / 2) % n) as usize),
            d => (d, (seq % n) as usize),
        }
    }
}

/// What the command line asked for.
pub enum Command {
    Run(Box<Args>),
    Help,
    /// Make the TLS files and exit.
    TlsInit(Box<Args>),
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{key}: {v:?} is not a valid number"))
}

fn secs(key: &str, v: &str, max: f64) -> Result<f64, String> {
    let s: f64 = num(key, v)?;
    if !(s > 0.0 && s <= max) {
        return Err(format!("{key}: must be in (0, {max}]"));
    }
    Ok(s)
}

fn loopback(key: &str, v: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = v
        .parse()
        .map_err(|_| format!("{key}: {v:?} is not an ip:port"))?;
    if !a.ip().is_loopback() {
        return Err(format!(
            "{key}: {a} is not a loopback address (the tool only loads a local gateway)"
        ));
    }
    Ok(a)
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[String]) -> Result<Command, String> {
    let mut a = Args::default();
    let mut scenario = None;
    let mut tls_init = false;
    let mut i = 0;
    while let Some(arg) = argv.get(i) {
        if arg == "--help" || arg == "-h" {
            return Ok(Command::Help);
        }
        let (key, val) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_owned(), v.to_owned()),
            _ => {
                i += 1;
                let v = argv
                    .get(i)
                    .ok_or_else(|| format!("{arg} needs a value"))?
                    .clone();
                (arg.clone(), v)
            }
        };
        let v = val.as_str();
        match key.as_str() {
            "--scenario" => {
                scenario = Some(match v.to_ascii_lowercase().as_str() {
                    "a" => Scenario::A,
                    "b" => Scenario::B,
                    "im" => Scenario::Im,
                    _ => return Err(format!("--scenario: {v:?} is not a, b or im")),
                })
            }
            "--n" => {
                a.n = num(&key, v)?;
                if a.n == 0 || a.n > 10_000_000 {
                    return Err("--n: must be 1..=10000000".into());
                }
            }
            "--xmpp-listen" => a.xmpp_listen = loopback(&key, v)?,
            "--component" => a.component = v.to_owned(),
            "--secret" => a.secret = v.to_owned(),
            "--sip-listen" => a.sip_listen = loopback(&key, v)?,
            "--gateway-sip" => a.gateway_sip = loopback(&key, v)?,
            "--gateway-domain" => a.gateway_domain = v.to_owned(),
            "--sip-domain" => a.sip_domain = v.to_owned(),
            "--xmpp-domain" => a.xmpp_domain = v.to_owned(),
            "--separator" => {
                let mut cs = v.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) if c != '@' && !c.is_whitespace() => a.separator = c,
                    _ => return Err("--separator: one character, not '@'".into()),
                }
            }
            "--sip-transport" => {
                a.sip_tcp = match v.to_ascii_lowercase().as_str() {
                    "udp" => false,
                    "tcp" => true,
                    _ => return Err(format!("--sip-transport: {v:?} is not udp or tcp")),
                }
            }
            "--rates" => {
                a.rates = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| num::<u64>(&key, s))
                    .collect::<Result<_, _>>()?;
                if a.rates.iter().any(|&r| r == 0 || r > 5_000_000) {
                    return Err("--rates: each rate must be 1..=5000000".into());
                }
            }
            "--step-secs" => a.step_secs = secs(&key, v, 3600.0)?,
            "--grace-secs" => a.grace_secs = secs(&key, v, 600.0)?,
            "--setup-window" => {
                a.setup_window = num(&key, v)?;
                if a.setup_window == 0 {
                    return Err("--setup-window: must be at least 1".into());
                }
            }
            "--setup-order" => {
                a.setup_spread = match v {
                    "spread" => true,
                    "seq" => false,
                    _ => return Err("--setup-order: spread or seq".into()),
                }
            }
            "--setup-timeout" => a.setup_timeout_secs = secs(&key, v, 3600.0)?,
            "--connect-timeout" => a.connect_timeout_secs = secs(&key, v, 3600.0)?,
            "--tick-ms" => {
                a.tick_ms = num(&key, v)?;
                if a.tick_ms == 0 || a.tick_ms > 1000 {
                    return Err("--tick-ms: must be 1..=1000".into());
                }
            }
            "--gateway-pid" => {
                a.gateway_pid = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| num::<u32>(&key, s))
                    .collect::<Result<_, _>>()?
            }
            "--json" => a.json = Some(PathBuf::from(v)),
            "--sip-tls-listen" => a.sip_tls_listen = Some(loopback(&key, v)?),
            "--tls-dir" => a.tls_dir = PathBuf::from(v),
            "--tls-init" => {
                a.tls_dir = PathBuf::from(v);
                tls_init = true;
            }
            "--im-direction" => {
                a.im_dir = match v.to_ascii_lowercase().as_str() {
                    "x2s" => ImDir::X2s,
                    "s2x" => ImDir::S2x,
                    "both" => ImDir::Both,
                    _ => return Err(format!("--im-direction: {v:?} is not x2s, s2x or both")),
                }
            }
            "--body-bytes" => {
                a.body_bytes = num(&key, v)?;
                if a.body_bytes == 0 || a.body_bytes > 65536 {
                    return Err("--body-bytes: must be 1..=65536".into());
                }
            }
            _ => return Err(format!("unknown option {key}")),
        }
        i += 1;
    }
    if tls_init {
        return Ok(Command::TlsInit(Box::new(a)));
    }
    a.scenario = scenario.ok_or("--scenario a|b|im is required")?;
    Ok(Command::Run(Box::new(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_order_visits_every_watcher_once() {
        for n in [1usize, 2, 7, 1000, 100_000] {
            let a = Args {
                n,
                ..Args::default()
            };
            let mut seen = vec![false; n];
            for i in 0..n {
                let j = a.setup_index(i);
                assert!(!seen[j], "n={n} i={i} j={j}");
                seen[j] = true;
            }
        }
        let a = Args {
            n: 1000,
            ..Args::default()
        };
        assert_ne!(
            (0..5).map(|i| a.setup_index(i)).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        let seq = Args {
            n: 1000,
            setup_spread: false,
            ..Args::default()
        };
        assert_eq!(seq.setup_index(3), 3);
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_the_documented_example() {
        let Ok(Command::Run(a)) = parse(&args(
            "--scenario b --n 10 --rates 1000,5000 --step-secs=3 --gateway-pid 42 --separator %",
        )) else {
            panic!("parse failed")
        };
        assert_eq!(a.scenario, Scenario::B);
        assert_eq!(a.n, 10);
        assert_eq!(a.rates, vec![1000, 5000]);
        assert_eq!(a.step_secs, 3.0);
        assert_eq!(a.gateway_pid, vec![42]);
        assert_eq!(a.separator, '%');
    }

    #[test]
    fn parses_the_im_options() {
        let Ok(Command::Run(a)) = parse(&args(
            "--scenario im --im-direction both --body-bytes 4096 --n 3 --rates 1000",
        )) else {
            panic!("parse failed")
        };
        assert_eq!(
            (a.scenario, a.im_dir, a.body_bytes),
            (Scenario::Im, ImDir::Both, 4096)
        );
        assert!(a.im_tcp());
        assert_eq!(a.im_multiplier(), 2);
        // Both ways: even numbers x2s, odd s2x, pairs advancing every two messages.
        let got: Vec<_> = (0..8).map(|s| a.im_of(s)).collect();
        assert_eq!(
            got,
            [
                (ImDir::X2s, 0),
                (ImDir::S2x, 0),
                (ImDir::X2s, 1),
                (ImDir::S2x, 1),
                (ImDir::X2s, 2),
                (ImDir::S2x, 2),
                (ImDir::X2s, 0),
                (ImDir::S2x, 0)
            ]
        );
        let Ok(Command::Run(d)) = parse(&args("--scenario im")) else {
            panic!("parse failed")
        };
        assert_eq!(
            (d.im_dir, d.body_bytes, d.im_tcp()),
            (ImDir::X2s, 100, false)
        );
        assert_eq!(d.im_of(1001), (ImDir::X2s, 1));
        assert!(parse(&args("--scenario im --body-bytes 0")).is_err());
        assert!(parse(&args("--scenario im --im-direction up")).is_err());
    }

    #[test]
    fn refuses_non_loopback_targets() {
        let Err(e) = parse(&args("--scenario a --gateway-sip 10.0.0.1:5060")) else {
            panic!("accepted a remote address")
        };
        assert_eq!(
            e,
            "--gateway-sip: 10.0.0.1:5060 is not a loopback address (the tool only loads a local gateway)"
        );
    }
}
