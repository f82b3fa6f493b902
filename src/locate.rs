//! Locating the SIP server of `sip.server_address` (RFC 3263 §4): which transport, address
//! and port out-of-dialog requests go to, and where to go next when one target fails.
//!
//! Sans-IO: [`Locator::handle_input`] takes DNS answers (typed NAPTR / SRV / address records
//! with their TTL), transaction outcomes per target and the current instant;
//! [`Locator::poll_output`] yields the queries to make, the ordered target list to use and
//! when to be woken (TTL expiry, end of a blacklisting). Randomness (RFC 2782 weights) comes
//! from a seeded [`IdGen`], so tests are deterministic.
//!
//! The procedure, for a host name (an IP literal needs no DNS at all):
//! - explicit port: A/AAAA of the host, that port (§4.2);
//! - explicit `transport=`: SRV `_sip._<proto>.host`, else A/AAAA with the default port;
//! - else NAPTR of the host, keeping `SIP+D2U` / `SIP+D2T` / `SIPS+D2T` records of a
//!   supported transport with flag `s`, by order then preference (§4.1); their replacements
//!   are SRV names. Without a usable NAPTR: SRV `_sip._<proto>.host` for each supported
//!   transport, the configured one first; without SRV: A/AAAA of the host, port 5060/5061.
//! - SRV records sort by priority, then by RFC 2782 weighted random order within a priority;
//!   each target's addresses follow in that order.
//!
//! A target that timed out or refused is moved to the back of the list for
//! [`LocateConfig::blacklist_for`] (§4.3: the next request goes to the next element). The list
//! is re-resolved when the shortest TTL of the answers it came from runs out; until the new
//! answers arrive the old list stays in use.

use crate::ids::IdGen;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A transport of RFC 3263 that the gateway may support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
    Tls,
}

impl Proto {
    /// The NAPTR service field of this transport (RFC 3263 §4.1).
    pub fn naptr_service(self) -> &'static str {
        match self {
            Proto::Udp => "SIP+D2U",
            Proto::Tcp => "SIP+D2T",
            Proto::Tls => "SIPS+D2T",
        }
    }

    /// The SRV owner prefix (RFC 3263 §4.1, RFC 2782).
    pub fn srv_prefix(self) -> &'static str {
        match self {
            Proto::Udp => "_sip._udp.",
            Proto::Tcp => "_sip._tcp.",
            Proto::Tls => "_sips._tcp.",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Proto::Tls => 5061,
            _ => 5060,
        }
    }

    /// From a URI `transport=` value.
    pub fn from_param(p: &str) -> Option<Proto> {
        match p.to_ascii_lowercase().as_str() {
            "udp" => Some(Proto::Udp),
            "tcp" => Some(Proto::Tcp),
            "tls" => Some(Proto::Tls),
            _ => None,
        }
    }
}

/// The record type of a [`Query`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    Naptr,
    Srv,
    A,
    Aaaa,
}

/// A DNS question the shell must ask; its answer comes back as [`Input::Answer`] with the same
/// query. Names are absolute, without the trailing dot, lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    pub name: String,
    pub rtype: RecordType,
}

/// A NAPTR record (RFC 3403), as far as RFC 3263 uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub replacement: String,
}

/// An SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The records of one answer; the variant must fit the query's type (else it counts as empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Records {
    Naptr(Vec<Naptr>),
    Srv(Vec<Srv>),
    Addrs(Vec<IpAddr>),
}

/// What the resolver said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Records, valid for `ttl` seconds (the smallest TTL among them).
    Records { records: Records, ttl: u32 },
    /// NXDOMAIN or no data; `ttl` is the negative-caching TTL when the server gave one.
    NoRecords { ttl: Option<u32> },
    /// No answer at all (server unreachable, SERVFAIL, timeout).
    Failed(String),
}

/// One place to send out-of-dialog requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: SocketAddr,
    pub proto: Proto,
}

/// How a transaction to a target failed (RFC 3263 §4.3 failures; a 503 is the caller's call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Timer F fired with no response.
    Timeout,
    /// Connection refused, reset, ICMP unreachable, or the connection closed under it.
    Refused,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Answer {
        query: Query,
        answer: Answer,
    },
    TargetFailed {
        addr: SocketAddr,
        failure: Failure,
    },
    /// A response came from `addr`: it is alive, so no longer blacklisted.
    TargetAnswered {
        addr: SocketAddr,
    },
    /// The instant of the last [`Output::WakeAt`] has come (early calls are harmless).
    Timeout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Query(Query),
    /// The targets in the order to try them; the first gets the next request. Empty when the
    /// name resolved to nothing usable (and nothing was known before).
    Targets(Vec<Target>),
    WakeAt(Instant),
}

/// Settings of a [`Locator`].
#[derive(Clone, Debug)]
pub struct LocateConfig {
    /// `sip.server_address`, e.g. `sip:example.com`, `sip:proxy.example.com:5070;transport=tcp`.
    pub uri: String,
    /// Transports the gateway can send on, the preferred (configured) one first.
    pub transports: Vec<Proto>,
    /// Ask for A records (the gateway has an IPv4 socket).
    pub ipv4: bool,
    /// Ask for AAAA records.
    pub ipv6: bool,
    /// How long a failed target stays at the back of the list.
    pub blacklist_for: Duration,
    /// Re-resolution delay when the DNS gave nothing usable (and the floor of any TTL).
    pub retry: Duration,
    /// Longest time an answer is kept, whatever its TTL.
    pub max_ttl: Duration,
}

impl LocateConfig {
    pub fn new(uri: &str, transports: Vec<Proto>) -> Self {
        LocateConfig {
            uri: uri.to_owned(),
            transports,
            ipv4: true,
            ipv6: false,
            blacklist_for: Duration::from_secs(32),
            retry: Duration::from_secs(5),
            max_ttl: Duration::from_secs(86_400),
        }
    }
}

/// Why `sip.server_address` cannot be located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocateError {
    NotSipUri(String),
    UnsupportedTransport(String),
    NoTransport,
}

impl std::fmt::Display for LocateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocateError::NotSipUri(u) => write!(f, "not a SIP URI: {u}"),
            LocateError::UnsupportedTransport(t) => {
                write!(f, "transport {t} is not supported by this gateway")
            }
            LocateError::NoTransport => write!(f, "no transport enabled"),
        }
    }
}

/// Where a resolution run stands.
#[derive(Debug)]
enum Stage {
    Idle,
    Naptr,
    /// SRV names still to try, in order; the front is being asked.
    Srv(VecDeque<(String, Proto)>),
    /// A/AAAA of the SRV targets (or of the host, with a port), in the order to use them.
    Addrs {
        /// (name, port, proto) in order, and the addresses found so far for each.
        hops: Vec<(String, u16, Proto, Vec<IpAddr>)>,
        /// Queries still unanswered.
        pending: Vec<Query>,
    },
}

/// The RFC 3263 locator of one server address.
pub struct Locator {
    cfg: LocateConfig,
    rng: IdGen,
    host: String,
    port: Option<u16>,
    /// The `transport=` of the URI, else None.
    forced: Option<Proto>,
    sips: bool,
    stage: Stage,
    /// Smallest TTL seen in the run in progress.
    run_ttl: Option<Duration>,
    /// The resolved list, in preference order (blacklisting not applied).
    current: Vec<Target>,
    /// When `current` must be resolved again (None: never, an IP literal).
    refresh_at: Option<Instant>,
    /// Failed addresses and until when they stay at the back.
    blacklist: Vec<(SocketAddr, Instant)>,
    last_sent: Option<Vec<Target>>,
    last_wake: Option<Instant>,
    out: VecDeque<Output>,
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Locator {
    /// A locator for `cfg.uri`; the first outputs (queries, or the target list of an IP
    /// literal) are ready at once.
    pub fn new(cfg: LocateConfig, rng: IdGen, now: Instant) -> Result<Locator, LocateError> {
        if cfg.transports.is_empty() {
            return Err(LocateError::NoTransport);
        }
        let hp = crate::sip::encode::uri_host_port(&cfg.uri)
            .ok_or_else(|| LocateError::NotSipUri(cfg.uri.clone()))?;
        let sips = cfg
            .uri
            .trim_start()
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("sips:"));
        let forced = match hp.transport.as_deref() {
            None => None,
            Some(t) => {
                let p = Proto::from_param(t)
                    .filter(|p| cfg.transports.contains(p))
                    .ok_or_else(|| LocateError::UnsupportedTransport(t.to_owned()))?;
                Some(p)
            }
        };
        if sips && !cfg.transports.contains(&Proto::Tls) {
            return Err(LocateError::UnsupportedTransport("tls (sips:)".to_owned()));
        }
        let host = norm(hp.host.trim_start_matches('[').trim_end_matches(']'));
        let mut loc = Locator {
            cfg,
            rng,
            host,
            port: hp.port,
            forced,
            sips,
            stage: Stage::Idle,
            run_ttl: None,
            current: Vec::new(),
            refresh_at: None,
            blacklist: Vec::new(),
            last_sent: None,
            last_wake: None,
            out: VecDeque::new(),
        };
        loc.start(now);
        loc.finish_step(now);
        Ok(loc)
    }

    /// The transport used without NAPTR/SRV guidance: the URI's `transport=`, TLS for sips,
    /// else the gateway's preferred one (`sip.transport`, as before RFC 3263 support; §4.1
    /// would say UDP, which is the default preference).
    fn plain_proto(&self) -> Proto {
        if let Some(p) = self.forced {
            return p;
        }
        if self.sips {
            return Proto::Tls;
        }
        self.cfg.transports[0]
    }

    /// The targets in the order to use them now: blacklisted ones last, the longest-failed
    /// first among them.
    pub fn targets(&self, now: Instant) -> Vec<Target> {
        let until = |t: &Target| {
            self.blacklist
                .iter()
                .find(|(a, until)| *a == t.addr && *until > now)
                .map(|(_, u)| *u)
        };
        let mut good: Vec<Target> = Vec::new();
        let mut bad: Vec<(Instant, Target)> = Vec::new();
        for t in &self.current {
            match until(t) {
                None => good.push(*t),
                Some(u) => bad.push((u, *t)),
            }
        }
        bad.sort_by_key(|(u, _)| *u);
        good.extend(bad.into_iter().map(|(_, t)| t));
        good
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next instant [`Input::Timeout`] is due, if any.
    pub fn next_wake(&self) -> Option<Instant> {
        let bl = self.blacklist.iter().map(|(_, u)| *u).min();
        match (self.refresh_at, bl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Answer { query, answer } => self.on_answer(query, answer, now),
            Input::TargetFailed { addr, failure } => {
                if self.current.iter().any(|t| t.addr == addr) {
                    tracing::debug!(%addr, ?failure, "locate: target failed; moved to the back");
                    let until = now + self.cfg.blacklist_for;
                    self.blacklist.retain(|(a, _)| *a != addr);
                    self.blacklist.push((addr, until));
                }
            }
            Input::TargetAnswered { addr } => self.blacklist.retain(|(a, _)| *a != addr),
            Input::Timeout => {
                self.blacklist.retain(|(_, u)| *u > now);
                if self.refresh_at.is_some_and(|t| t <= now) && matches!(self.stage, Stage::Idle) {
                    self.refresh_at = None;
                    self.start(now);
                }
            }
        }
        self.finish_step(now);
    }

    /// Emits the target list when it changed, and the wake-up when it moved.
    fn finish_step(&mut self, now: Instant) {
        self.blacklist.retain(|(_, u)| *u > now);
        let resolved = matches!(self.stage, Stage::Idle) || !self.current.is_empty();
        if resolved {
            let list = self.targets(now);
            if self.last_sent.as_ref() != Some(&list) {
                self.last_sent = Some(list.clone());
                self.out.push_back(Output::Targets(list));
            }
        }
        let wake = self.next_wake();
        if wake.is_some() && wake != self.last_wake {
            if let Some(w) = wake {
                self.out.push_back(Output::WakeAt(w));
            }
        }
        self.last_wake = wake;
    }

    fn ask(&mut self, name: String, rtype: RecordType) {
        self.out.push_back(Output::Query(Query { name, rtype }));
    }

    /// Starts a resolution run (§4.1 / §4.2).
    fn start(&mut self, now: Instant) {
        self.run_ttl = None;
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            let proto = self.plain_proto();
            let port = self.port.unwrap_or(proto.default_port());
            self.current = vec![Target {
                addr: SocketAddr::new(ip, port),
                proto,
            }];
            self.stage = Stage::Idle;
            self.refresh_at = None;
            return;
        }
        if let Some(port) = self.port {
            let proto = self.plain_proto();
            self.resolve_hops(vec![(self.host.clone(), port, proto)], now);
            return;
        }
        if let Some(p) = self.forced {
            let names = VecDeque::from([(format!("{}{}", p.srv_prefix(), self.host), p)]);
            self.next_srv(names, now);
            return;
        }
        self.stage = Stage::Naptr;
        self.ask(self.host.clone(), RecordType::Naptr);
    }

    fn note_ttl(&mut self, ttl: Option<u32>) {
        let d = ttl.map_or(self.cfg.retry, |s| Duration::from_secs(u64::from(s)));
        let d = d.clamp(self.cfg.retry.min(self.cfg.max_ttl), self.cfg.max_ttl);
        self.run_ttl = Some(self.run_ttl.map_or(d, |t| t.min(d)));
    }

    fn on_answer(&mut self, query: Query, answer: Answer, now: Instant) {
        let expected = match &self.stage {
            Stage::Idle => false,
            Stage::Naptr => query.rtype == RecordType::Naptr && query.name == self.host,
            Stage::Srv(names) => {
                query.rtype == RecordType::Srv && names.front().is_some_and(|n| n.0 == query.name)
            }
            Stage::Addrs { pending, .. } => pending.contains(&query),
        };
        if !expected {
            tracing::debug!(?query, "locate: answer to no pending query ignored");
            return;
        }
        match &answer {
            Answer::Records { ttl, .. } => self.note_ttl(Some(*ttl)),
            Answer::NoRecords { ttl } => self.note_ttl(*ttl),
            Answer::Failed(e) => {
                tracing::warn!(name = %query.name, rtype = ?query.rtype, error = %e, "DNS query failed");
                self.note_ttl(None);
            }
        }
        let records = match answer {
            Answer::Records { records, .. } => Some(records),
            _ => None,
        };
        match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Idle => {}
            Stage::Naptr => {
                let naptrs = match records {
                    Some(Records::Naptr(v)) => v,
                    _ => Vec::new(),
                };
                let names = self.srv_names_from_naptr(naptrs);
                self.next_srv(names, now);
            }
            Stage::Srv(mut names) => {
                let srvs = match records {
                    Some(Records::Srv(v)) => v,
                    _ => Vec::new(),
                };
                // A single record with target "." says: no such service here (RFC 2782).
                let srvs: Vec<Srv> = srvs
                    .into_iter()
                    .filter(|s| !norm(&s.target).is_empty())
                    .collect();
                let Some((_, proto)) = names.pop_front() else {
                    return;
                };
                if srvs.is_empty() {
                    self.next_srv(names, now);
                } else {
                    let ordered = order_srv(srvs, &mut self.rng);
                    let hops = ordered
                        .into_iter()
                        .map(|s| (norm(&s.target), s.port, proto))
                        .collect();
                    self.resolve_hops(hops, now);
                }
            }
            Stage::Addrs {
                mut hops,
                mut pending,
            } => {
                pending.retain(|q| *q != query);
                if let Some(Records::Addrs(ips)) = records {
                    for hop in hops.iter_mut().filter(|h| h.0 == query.name) {
                        for ip in &ips {
                            let wanted =
                                (ip.is_ipv4() && self.cfg.ipv4) || (ip.is_ipv6() && self.cfg.ipv6);
                            if wanted && !hop.3.contains(ip) {
                                hop.3.push(*ip);
                            }
                        }
                    }
                }
                if pending.is_empty() {
                    self.complete(hops, now);
                } else {
                    self.stage = Stage::Addrs { hops, pending };
                }
            }
        }
    }

    /// §4.1: the SRV names of the usable NAPTR records, by order then preference; without
    /// any, `_sip._<proto>.host` for each supported transport, the preferred first.
    fn srv_names_from_naptr(&self, mut naptrs: Vec<Naptr>) -> VecDeque<(String, Proto)> {
        naptrs.sort_by_key(|n| (n.order, n.preference));
        let mut names = VecDeque::new();
        for n in &naptrs {
            if !n.flags.eq_ignore_ascii_case("s") {
                continue;
            }
            let proto = self
                .cfg
                .transports
                .iter()
                .copied()
                .filter(|p| !self.sips || *p == Proto::Tls)
                .find(|p| n.services.eq_ignore_ascii_case(p.naptr_service()));
            let repl = norm(&n.replacement);
            if let (Some(p), false) = (proto, repl.is_empty()) {
                if !names.iter().any(|(r, _)| *r == repl) {
                    names.push_back((repl, p));
                }
            }
        }
        if names.is_empty() {
            for p in self.cfg.transports.iter().copied() {
                if !self.sips || p == Proto::Tls {
                    names.push_back((format!("{}{}", p.srv_prefix(), self.host), p));
                }
            }
        }
        names
    }

    /// Asks the next SRV name; with none left, falls back to A/AAAA of the host (§4.2).
    fn next_srv(&mut self, names: VecDeque<(String, Proto)>, now: Instant) {
        match names.front() {
            Some((name, _)) => {
                let name = name.clone();
                self.stage = Stage::Srv(names);
                self.ask(name, RecordType::Srv);
            }
            None => {
                let proto = self.plain_proto();
                let hop = (self.host.clone(), proto.default_port(), proto);
                self.resolve_hops(vec![hop], now);
            }
        }
    }

    /// Asks A and/or AAAA for every distinct name of `hops`.
    fn resolve_hops(&mut self, hops: Vec<(String, u16, Proto)>, now: Instant) {
        let mut pending = Vec::new();
        for (name, _, _) in &hops {
            // An SRV target may be an address already (not allowed, but seen).
            if name.parse::<IpAddr>().is_ok() {
                continue;
            }
            for (on, rtype) in [
                (self.cfg.ipv4, RecordType::A),
                (self.cfg.ipv6, RecordType::Aaaa),
            ] {
                let q = Query {
                    name: name.clone(),
                    rtype,
                };
                if on && !pending.contains(&q) {
                    pending.push(q);
                }
            }
        }
        let hops: Vec<_> = hops
            .into_iter()
            .map(|(n, port, p)| {
                let ips = n.parse::<IpAddr>().into_iter().collect();
                (n, port, p, ips)
            })
            .collect();
        if pending.is_empty() {
            self.complete(hops, now);
            return;
        }
        for q in &pending {
            self.ask(q.name.clone(), q.rtype);
        }
        self.stage = Stage::Addrs { hops, pending };
    }

    /// The run is over: install its list (or keep the old one if it found nothing).
    fn complete(&mut self, hops: Vec<(String, u16, Proto, Vec<IpAddr>)>, now: Instant) {
        self.stage = Stage::Idle;
        let mut list: Vec<Target> = Vec::new();
        for (_, port, proto, ips) in hops {
            for ip in ips {
                let t = Target {
                    addr: SocketAddr::new(ip, port),
                    proto,
                };
                if !list.contains(&t) {
                    list.push(t);
                }
            }
        }
        if list.is_empty() {
            tracing::warn!(host = %self.host, "sip.server_address resolved to no usable address; retrying later");
            self.refresh_at = Some(now + self.cfg.retry);
            return;
        }
        if list == self.current {
            tracing::debug!(host = %self.host, "sip.server_address located again: unchanged");
        } else {
            tracing::info!(host = %self.host, targets = ?list, "sip.server_address located");
        }
        self.current = list;
        self.refresh_at = Some(now + self.run_ttl.unwrap_or(self.cfg.retry));
    }
}

/// RFC 2782 order: ascending priority; within one priority, repeatedly pick a record at random
/// with probability proportional to its weight (zero-weight records first in the running sum,
/// so they have a small chance to be picked before others).
pub fn order_srv(mut srvs: Vec<Srv>, rng: &mut IdGen) -> Vec<Srv> {
    srvs.sort_by_key(|s| (s.priority, s.weight != 0));
    let mut out = Vec::with_capacity(srvs.len());
    while !srvs.is_empty() {
        let prio = srvs[0].priority;
        let n = srvs.iter().take_while(|s| s.priority == prio).count();
        let mut group: Vec<Srv> = srvs.drain(..n).collect();
        while !group.is_empty() {
            let total: u64 = group.iter().map(|s| u64::from(s.weight)).sum();
            let r = rng.below(total + 1);
            let mut sum = 0u64;
            let mut pick = group.len() - 1;
            for (i, s) in group.iter().enumerate() {
                sum += u64::from(s.weight);
                if sum >= r {
                    pick = i;
                    break;
                }
            }
            out.push(group.remove(pick));
        }
    }
    out
}

#[cfg(test)]
#[path = "locate_tests.rs"]
mod tests;
