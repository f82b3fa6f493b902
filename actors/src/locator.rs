//! The actor shell of RFC 3263 server location ([`pua_xmpp::locate`]): it owns the DNS
//! resolver (hickory), asks what the core asks, feeds the answers back with their TTLs, keeps
//! the core's wake-up timer, and pushes each new ordered target list to the SIP transport. The
//! transport reports per-target failures ([`TargetReport`]) so the next out-of-dialog request
//! goes to the next target.

use crate::messages::{SetTargets, TargetOutcome, TargetReport, Transport};
use actix::prelude::*;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType as DnsType};
use hickory_resolver::TokioResolver;
use pua_xmpp::locate::{
    Answer, Failure, Input, LocateConfig, Locator as Core, Naptr, Output, Proto, Query, RecordType,
    Records, Srv,
};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{info, warn};

/// Settings of the [`Locator`] actor.
pub struct LocatorConfig {
    pub locate: LocateConfig,
    /// DNS servers to ask; empty = the system configuration (resolv.conf).
    pub dns_servers: Vec<SocketAddr>,
}

/// Builds the resolver: the given servers (UDP then TCP each) or the system's.
pub fn resolver(dns_servers: &[SocketAddr]) -> std::io::Result<TokioResolver> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    let err = |e: NetError| std::io::Error::other(format!("DNS resolver: {e}"));
    let builder = if dns_servers.is_empty() {
        TokioResolver::builder_tokio().map_err(err)?
    } else {
        let servers = dns_servers
            .iter()
            .map(|sa| {
                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                for c in &mut ns.connections {
                    c.port = sa.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let mut builder = builder;
    // Start-up waits for the first location: a dead server must not hold it for long.
    builder.options_mut().timeout = std::time::Duration::from_secs(2);
    builder.options_mut().attempts = 2;
    builder.build().map_err(err)
}

/// A located core and its resolver, before the actor starts.
pub struct Primed {
    core: Core,
    resolver: Option<TokioResolver>,
}

pub struct Locator {
    core: Core,
    /// None when it could not be built (no resolv.conf): fine for an IP literal.
    resolver: Option<TokioResolver>,
    transport: Recipient<SetTargets>,
    wake: Option<SpawnHandle>,
}

fn to_transport(list: &[pua_xmpp::locate::Target]) -> Vec<(SocketAddr, Transport)> {
    list.iter()
        .map(|t| {
            let tr = match t.proto {
                Proto::Tcp => Transport::Tcp,
                Proto::Tls => Transport::Tls,
                Proto::Udp => Transport::Udp,
            };
            (t.addr, tr)
        })
        .collect()
}

/// One DNS question, answered as the core wants it.
async fn ask(resolver: Option<&TokioResolver>, q: &Query) -> Answer {
    let Some(resolver) = resolver else {
        return Answer::Failed("no DNS resolver (see the log at start)".to_owned());
    };
    let rtype = match q.rtype {
        RecordType::Naptr => DnsType::NAPTR,
        RecordType::Srv => DnsType::SRV,
        RecordType::A => DnsType::A,
        RecordType::Aaaa => DnsType::AAAA,
    };
    // Absolute: no search domains appended.
    let fqdn = format!("{}.", q.name);
    match resolver.lookup(fqdn.as_str(), rtype).await {
        Ok(lookup) => to_answer(q.rtype, lookup.answers()),
        Err(e) if e.is_no_records_found() => Answer::NoRecords {
            ttl: negative_ttl(&e),
        },
        Err(e) => Answer::Failed(e.to_string()),
    }
}

impl Locator {
    /// Resolves `cfg` once (waiting for the DNS), so the transport starts with a target:
    /// the located list (possibly empty), and the locator to start with
    /// [`Locator::start_with`] once the transport exists.
    pub async fn prime(
        cfg: LocatorConfig,
    ) -> std::io::Result<(Primed, Vec<(SocketAddr, Transport)>)> {
        let seed = pua_xmpp::ids::fresh_stream();
        let mut core = Core::new(cfg.locate, pua_xmpp::ids::IdGen::new(seed), Instant::now())
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("sip.server_address: {e}"),
                )
            })?;
        let resolver = match resolver(&cfg.dns_servers) {
            Ok(r) => Some(r),
            Err(e) if cfg.dns_servers.is_empty() => {
                // Not needed for an IP literal; a name fails at its first query.
                warn!(error = %e, "no DNS resolver from the system configuration");
                None
            }
            Err(e) => return Err(e),
        };
        let mut list = None;
        let mut queries = std::collections::VecDeque::new();
        loop {
            while let Some(out) = core.poll_output() {
                match out {
                    Output::Query(q) => queries.push_back(q),
                    Output::Targets(l) => list = Some(l),
                    Output::WakeAt(_) => {}
                }
            }
            if list.is_some() {
                break;
            }
            let Some(q) = queries.pop_front() else {
                break;
            };
            let answer = ask(resolver.as_ref(), &q).await;
            tracing::debug!(name = %q.name, rtype = ?q.rtype, ?answer, "DNS answer");
            core.handle_input(Input::Answer { query: q, answer }, Instant::now());
        }
        let list = list.unwrap_or_default();
        if list.is_empty() {
            warn!("sip.server_address: no target located at start; retrying in the background");
        } else {
            info!(targets = ?list, "sip.server_address: targets (RFC 3263)");
        }
        let targets = to_transport(&list);
        Ok((Primed { core, resolver }, targets))
    }

    /// Starts the locator actor, pushing its targets to `transport` from now on.
    pub fn start_with(primed: Primed, transport: Recipient<SetTargets>) -> Addr<Locator> {
        Locator {
            core: primed.core,
            resolver: primed.resolver,
            transport,
            wake: None,
        }
        .start()
    }

    /// Pushes the current order to the transport.
    fn push(&self, list: &[pua_xmpp::locate::Target], ctx: &mut Context<Self>) {
        self.transport.do_send(SetTargets {
            targets: to_transport(list),
            report_to: Some(ctx.address().recipient()),
        });
    }

    fn arm(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if let Some(h) = self.wake.take() {
            ctx.cancel_future(h);
        }
        let after = at.saturating_duration_since(Instant::now());
        self.wake = Some(ctx.run_later(after, |act, ctx| {
            act.wake = None;
            act.core.handle_input(Input::Timeout, Instant::now());
            act.drain(ctx);
        }));
    }

    /// Carries out what the core asks for.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Query(q) => self.lookup(q, ctx),
                Output::Targets(list) => {
                    if list.is_empty() {
                        warn!("sip.server_address: no target to send requests to (DNS gave nothing usable)");
                    } else {
                        info!(targets = ?list, "sip.server_address: new target order");
                    }
                    self.push(&list, ctx);
                }
                Output::WakeAt(at) => self.arm(at, ctx),
            }
        }
    }

    fn lookup(&mut self, q: Query, ctx: &mut Context<Self>) {
        let resolver = self.resolver.clone();
        let fut = async move {
            let answer = ask(resolver.as_ref(), &q).await;
            (q, answer)
        };
        ctx.spawn(fut.into_actor(self).map(|(q, answer), act, ctx| {
            tracing::debug!(name = %q.name, rtype = ?q.rtype, ?answer, "DNS answer");
            act.core
                .handle_input(Input::Answer { query: q, answer }, Instant::now());
            act.drain(ctx);
        }));
    }
}

fn negative_ttl(e: &NetError) -> Option<u32> {
    match e {
        NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(nr)) => nr.negative_ttl,
        _ => None,
    }
}

/// The typed records of `rtype` among `records`, with their smallest TTL.
fn to_answer(rtype: RecordType, records: &[hickory_resolver::proto::rr::Record]) -> Answer {
    let mut ttl = u32::MAX;
    let mut naptr = Vec::new();
    let mut srv = Vec::new();
    let mut addrs = Vec::new();
    for r in records {
        let used = match (&r.data, rtype) {
            (RData::NAPTR(n), RecordType::Naptr) => {
                naptr.push(Naptr {
                    order: n.order,
                    preference: n.preference,
                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                    services: String::from_utf8_lossy(&n.services).into_owned(),
                    replacement: n.replacement.to_ascii(),
                });
                true
            }
            (RData::SRV(s), RecordType::Srv) => {
                srv.push(Srv {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_ascii(),
                });
                true
            }
            (RData::A(a), RecordType::A) => {
                addrs.push(std::net::IpAddr::V4(a.0));
                true
            }
            (RData::AAAA(a), RecordType::Aaaa) => {
                addrs.push(std::net::IpAddr::V6(a.0));
                true
            }
            // CNAMEs on the way, and anything unexpected.
            _ => false,
        };
        if used {
            ttl = ttl.min(r.ttl);
        }
    }
    let records = match rtype {
        RecordType::Naptr if !naptr.is_empty() => Records::Naptr(naptr),
        RecordType::Srv if !srv.is_empty() => Records::Srv(srv),
        RecordType::A | RecordType::Aaaa if !addrs.is_empty() => Records::Addrs(addrs),
        _ => return Answer::NoRecords { ttl: None },
    };
    Answer::Records { records, ttl }
}

impl Actor for Locator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The list found by `prime` and its expiry; then whatever the core has queued.
        let list = self.core.targets(Instant::now());
        self.push(&list, ctx);
        if let Some(at) = self.core.next_wake() {
            self.arm(at, ctx);
        }
        self.drain(ctx);
    }
}

impl Handler<TargetReport> for Locator {
    type Result = ();

    fn handle(&mut self, msg: TargetReport, ctx: &mut Context<Self>) {
        let input = match msg.outcome {
            TargetOutcome::Timeout => Input::TargetFailed {
                addr: msg.addr,
                failure: Failure::Timeout,
            },
            TargetOutcome::Refused => Input::TargetFailed {
                addr: msg.addr,
                failure: Failure::Refused,
            },
            TargetOutcome::Answered => Input::TargetAnswered { addr: msg.addr },
        };
        if !matches!(msg.outcome, TargetOutcome::Answered) {
            warn!(target = %msg.addr, outcome = ?msg.outcome, "SIP server target failed; failing over to the next (RFC 3263 §4.3)");
        }
        self.core.handle_input(input, Instant::now());
        self.drain(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{A, CNAME, NAPTR, SRV};
    use hickory_resolver::proto::rr::{Name, Record};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn hickory_records_become_typed_answers_with_the_smallest_ttl() {
        let recs = vec![
            Record::from_rdata(
                name("sip.test."),
                300,
                RData::NAPTR(NAPTR::new(
                    10,
                    20,
                    b"S".to_vec().into(),
                    b"SIP+D2T".to_vec().into(),
                    b"".to_vec().into(),
                    name("_sip._tcp.sip.test."),
                )),
            ),
            // A CNAME on the way is skipped, and its TTL does not count.
            Record::from_rdata(name("x.test."), 5, RData::CNAME(CNAME(name("sip.test.")))),
        ];
        assert_eq!(
            to_answer(RecordType::Naptr, &recs),
            Answer::Records {
                records: Records::Naptr(vec![Naptr {
                    order: 10,
                    preference: 20,
                    flags: "S".into(),
                    services: "SIP+D2T".into(),
                    replacement: "_sip._tcp.sip.test.".into(),
                }]),
                ttl: 300,
            }
        );
        let srv = vec![
            Record::from_rdata(
                name("_sip._tcp.sip.test."),
                120,
                RData::SRV(SRV::new(10, 5, 5060, name("kam1.sip.test."))),
            ),
            Record::from_rdata(
                name("_sip._tcp.sip.test."),
                60,
                RData::SRV(SRV::new(20, 0, 5061, name("kam2.sip.test."))),
            ),
        ];
        match to_answer(RecordType::Srv, &srv) {
            Answer::Records {
                records: Records::Srv(v),
                ttl,
            } => {
                assert_eq!(ttl, 60);
                assert_eq!(
                    v[1],
                    Srv {
                        priority: 20,
                        weight: 0,
                        port: 5061,
                        target: "kam2.sip.test.".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        let a = vec![Record::from_rdata(
            name("kam1.sip.test."),
            30,
            RData::A(A("127.0.0.14".parse().unwrap())),
        )];
        assert_eq!(
            to_answer(RecordType::A, &a),
            Answer::Records {
                records: Records::Addrs(vec!["127.0.0.14".parse().unwrap()]),
                ttl: 30
            }
        );
        // Records of another type than asked: no records.
        assert_eq!(
            to_answer(RecordType::Aaaa, &a),
            Answer::NoRecords { ttl: None }
        );
    }
}
