//! Tests of RFC 3263 server location against a scripted resolver.

use super::*;
use std::collections::HashMap;

/// Answers queries from a table; unknown names get NXDOMAIN. Records what was asked.
struct Script {
    answers: HashMap<(String, RecordType), Answer>,
    asked: Vec<Query>,
}

impl Script {
    fn new() -> Self {
        Script {
            answers: HashMap::new(),
            asked: Vec::new(),
        }
    }

    fn naptr(mut self, name: &str, recs: &[(u16, u16, &str, &str)], ttl: u32) -> Self {
        let v = recs
            .iter()
            .map(|&(order, preference, services, replacement)| Naptr {
                order,
                preference,
                flags: "s".to_owned(),
                services: services.to_owned(),
                replacement: replacement.to_owned(),
            })
            .collect();
        self.answers.insert(
            (name.to_owned(), RecordType::Naptr),
            Answer::Records {
                records: Records::Naptr(v),
                ttl,
            },
        );
        self
    }

    fn srv(mut self, name: &str, recs: &[(u16, u16, u16, &str)], ttl: u32) -> Self {
        let v = recs
            .iter()
            .map(|&(priority, weight, port, target)| Srv {
                priority,
                weight,
                port,
                target: target.to_owned(),
            })
            .collect();
        self.answers.insert(
            (name.to_owned(), RecordType::Srv),
            Answer::Records {
                records: Records::Srv(v),
                ttl,
            },
        );
        self
    }

    fn a(mut self, name: &str, ips: &[&str], ttl: u32) -> Self {
        let v = ips.iter().map(|s| s.parse().unwrap()).collect();
        self.answers.insert(
            (name.to_owned(), RecordType::A),
            Answer::Records {
                records: Records::Addrs(v),
                ttl,
            },
        );
        self
    }

    fn set(&mut self, name: &str, rtype: RecordType, answer: Answer) {
        self.answers.insert((name.to_owned(), rtype), answer);
    }

    /// Feeds every query the locator asks until it asks nothing more; returns the other
    /// outputs in order.
    fn drive(&mut self, loc: &mut Locator, now: Instant) -> Vec<Output> {
        let mut other = Vec::new();
        let mut queue = VecDeque::new();
        loop {
            while let Some(o) = loc.poll_output() {
                match o {
                    Output::Query(q) => queue.push_back(q),
                    o => other.push(o),
                }
            }
            let Some(q) = queue.pop_front() else {
                return other;
            };
            self.asked.push(q.clone());
            let answer = self
                .answers
                .get(&(q.name.clone(), q.rtype))
                .cloned()
                .unwrap_or(Answer::NoRecords { ttl: Some(60) });
            loc.handle_input(Input::Answer { query: q, answer }, now);
        }
    }
}

fn cfg(uri: &str) -> LocateConfig {
    LocateConfig::new(uri, vec![Proto::Udp, Proto::Tcp])
}

fn t(s: &str, proto: Proto) -> Target {
    Target {
        addr: s.parse().unwrap(),
        proto,
    }
}

fn last_targets(outs: &[Output]) -> Option<Vec<Target>> {
    outs.iter().rev().find_map(|o| match o {
        Output::Targets(v) => Some(v.clone()),
        _ => None,
    })
}

fn q(name: &str, rtype: RecordType) -> Query {
    Query {
        name: name.to_owned(),
        rtype,
    }
}

/// Two Kamailios behind NAPTR → SRV (TCP) → A, as the e2e lab serves them.
fn lab() -> Script {
    Script::new()
        .naptr(
            "sip.test",
            &[
                (10, 10, "SIP+D2T", "_sip._tcp.sip.test."),
                (20, 10, "SIP+D2U", "_sip._udp.sip.test."),
            ],
            300,
        )
        .srv(
            "_sip._tcp.sip.test",
            &[
                (10, 0, 5060, "kam1.sip.test."),
                (20, 0, 5060, "kam2.sip.test."),
            ],
            120,
        )
        .a("kam1.sip.test", &["127.0.0.14"], 600)
        .a("kam2.sip.test", &["127.0.0.15"], 600)
}

#[test]
fn naptr_srv_a_in_priority_order() {
    let now = Instant::now();
    let mut s = lab();
    let mut loc = Locator::new(cfg("sip:sip.test"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(
        s.asked,
        vec![
            q("sip.test", RecordType::Naptr),
            q("_sip._tcp.sip.test", RecordType::Srv),
            q("kam1.sip.test", RecordType::A),
            q("kam2.sip.test", RecordType::A),
        ]
    );
    assert_eq!(
        outs,
        vec![
            Output::Targets(vec![
                t("127.0.0.14:5060", Proto::Tcp),
                t("127.0.0.15:5060", Proto::Tcp)
            ]),
            // The shortest TTL of the run (the SRV's 120 s).
            Output::WakeAt(now + Duration::from_secs(120)),
        ]
    );
}

#[test]
fn naptr_order_then_preference_and_unsupported_services_skipped() {
    let now = Instant::now();
    let mut s = Script::new()
        .naptr(
            "ex.test",
            &[
                (10, 50, "SIP+D2U", "_sip._udp.ex.test"),
                (10, 20, "SIPS+D2T", "_sips._tcp.ex.test"),
                (5, 90, "SIP+D2S", "_sip._sctp.ex.test"),
            ],
            300,
        )
        .srv("_sip._udp.ex.test", &[(0, 0, 5070, "a.ex.test")], 300)
        .a("a.ex.test", &["192.0.2.1"], 300);
    // TLS and SCTP are not supported: the UDP record wins despite its preference.
    let mut loc = Locator::new(cfg("sip:ex.test"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(s.asked[1], q("_sip._udp.ex.test", RecordType::Srv));
    assert_eq!(
        last_targets(&outs),
        Some(vec![t("192.0.2.1:5070", Proto::Udp)])
    );
}

#[test]
fn no_naptr_means_srv_for_the_configured_transport_first() {
    let now = Instant::now();
    let mut s = Script::new()
        .srv("_sip._tcp.ex.test", &[(0, 0, 5080, "b.ex.test")], 300)
        .srv("_sip._udp.ex.test", &[(0, 0, 5090, "c.ex.test")], 300)
        .a("b.ex.test", &["192.0.2.2"], 300)
        .a("c.ex.test", &["192.0.2.3"], 300);
    let mut c = cfg("sip:ex.test");
    c.transports = vec![Proto::Tcp, Proto::Udp]; // sip.transport = "tcp"
    let mut loc = Locator::new(c, IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(
        s.asked,
        vec![
            q("ex.test", RecordType::Naptr),
            q("_sip._tcp.ex.test", RecordType::Srv),
            q("b.ex.test", RecordType::A),
        ]
    );
    assert_eq!(
        last_targets(&outs),
        Some(vec![t("192.0.2.2:5080", Proto::Tcp)])
    );

    // UDP preferred and no UDP SRV: TCP's SRV is asked next.
    let mut s = Script::new()
        .srv("_sip._tcp.ex.test", &[(0, 0, 5080, "b.ex.test")], 300)
        .a("b.ex.test", &["192.0.2.2"], 300);
    let mut loc = Locator::new(cfg("sip:ex.test"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(s.asked[1], q("_sip._udp.ex.test", RecordType::Srv));
    assert_eq!(s.asked[2], q("_sip._tcp.ex.test", RecordType::Srv));
    assert_eq!(
        last_targets(&outs),
        Some(vec![t("192.0.2.2:5080", Proto::Tcp)])
    );
}

#[test]
fn no_srv_means_a_records_on_the_default_port() {
    let now = Instant::now();
    let mut s = Script::new().a("ex.test", &["192.0.2.9", "192.0.2.10"], 30);
    let mut loc = Locator::new(cfg("sip:ex.test"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(s.asked.last(), Some(&q("ex.test", RecordType::A)));
    assert_eq!(
        last_targets(&outs),
        Some(vec![
            t("192.0.2.9:5060", Proto::Udp),
            t("192.0.2.10:5060", Proto::Udp)
        ])
    );
}

#[test]
fn explicit_port_skips_naptr_and_srv() {
    let now = Instant::now();
    let mut s = lab().a("sip.test", &["192.0.2.7"], 300);
    let mut loc = Locator::new(cfg("sip:sip.test:5070;transport=tcp"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(s.asked, vec![q("sip.test", RecordType::A)]);
    assert_eq!(
        last_targets(&outs),
        Some(vec![t("192.0.2.7:5070", Proto::Tcp)])
    );
}

#[test]
fn explicit_transport_asks_its_srv_only() {
    let now = Instant::now();
    let mut s = lab();
    let mut loc = Locator::new(cfg("sip:sip.test;transport=tcp"), IdGen::new(1), now).unwrap();
    s.drive(&mut loc, now);
    assert_eq!(s.asked[0], q("_sip._tcp.sip.test", RecordType::Srv));
    assert!(!s.asked.iter().any(|q| q.rtype == RecordType::Naptr));
}

#[test]
fn ip_literal_needs_no_dns() {
    let now = Instant::now();
    let mut s = Script::new();
    let mut loc = Locator::new(cfg("sip:127.0.0.1:5070"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert!(s.asked.is_empty());
    assert_eq!(
        outs,
        vec![Output::Targets(vec![t("127.0.0.1:5070", Proto::Udp)])]
    );
    let mut loc = Locator::new(cfg("sip:[::1];transport=tcp"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert!(s.asked.is_empty());
    assert_eq!(last_targets(&outs), Some(vec![t("[::1]:5060", Proto::Tcp)]));
    assert_eq!(loc.next_wake(), None);
}

#[test]
fn bad_addresses_are_refused() {
    let now = Instant::now();
    assert!(matches!(
        Locator::new(cfg("http://x"), IdGen::new(1), now),
        Err(LocateError::NotSipUri(_))
    ));
    assert!(matches!(
        Locator::new(cfg("sip:x.test;transport=sctp"), IdGen::new(1), now),
        Err(LocateError::UnsupportedTransport(_))
    ));
    assert!(matches!(
        Locator::new(cfg("sips:x.test"), IdGen::new(1), now),
        Err(LocateError::UnsupportedTransport(_))
    ));
}

#[test]
fn failover_on_timeout_and_on_refusal_then_back_after_the_blacklisting() {
    let now = Instant::now();
    let mut s = lab();
    let mut loc = Locator::new(cfg("sip:sip.test"), IdGen::new(1), now).unwrap();
    s.drive(&mut loc, now);
    let k1 = t("127.0.0.14:5060", Proto::Tcp);
    let k2 = t("127.0.0.15:5060", Proto::Tcp);

    // The top target times out: the next request goes to the second one.
    let t1 = now + Duration::from_secs(1);
    loc.handle_input(
        Input::TargetFailed {
            addr: k1.addr,
            failure: Failure::Timeout,
        },
        t1,
    );
    let outs = s.drive(&mut loc, t1);
    assert_eq!(
        outs,
        vec![
            Output::Targets(vec![k2, k1]),
            Output::WakeAt(t1 + Duration::from_secs(32)),
        ]
    );

    // The second refuses too: both failed, the one that failed first is tried first.
    let t2 = now + Duration::from_secs(2);
    loc.handle_input(
        Input::TargetFailed {
            addr: k2.addr,
            failure: Failure::Refused,
        },
        t2,
    );
    assert_eq!(s.drive(&mut loc, t2), vec![Output::Targets(vec![k1, k2])]);

    // A failure of an address not in the list changes nothing.
    loc.handle_input(
        Input::TargetFailed {
            addr: "192.0.2.1:5060".parse().unwrap(),
            failure: Failure::Refused,
        },
        t2,
    );
    assert_eq!(s.drive(&mut loc, t2), vec![]);

    // k1's blacklisting ends: k1 is first again, k2 still at the back.
    let t3 = t1 + Duration::from_secs(32);
    loc.handle_input(Input::Timeout, t3);
    // (The list reads the same as before, so only the next wake-up comes out.)
    assert_eq!(
        s.drive(&mut loc, t3),
        vec![Output::WakeAt(t2 + Duration::from_secs(32))]
    );
    assert_eq!(loc.targets(t3), vec![k1, k2]);

    // k2 answers: it is alive again.
    loc.handle_input(Input::TargetAnswered { addr: k2.addr }, t3);
    assert_eq!(loc.targets(t3), vec![k1, k2]);
    assert_eq!(loc.next_wake(), Some(now + Duration::from_secs(120)));
}

#[test]
fn failover_to_the_next_srv_when_the_top_one_refuses() {
    let now = Instant::now();
    let mut s = lab();
    let mut loc = Locator::new(cfg("sip:sip.test"), IdGen::new(1), now).unwrap();
    s.drive(&mut loc, now);
    loc.handle_input(
        Input::TargetFailed {
            addr: "127.0.0.14:5060".parse().unwrap(),
            failure: Failure::Refused,
        },
        now,
    );
    assert_eq!(
        last_targets(&s.drive(&mut loc, now)),
        Some(vec![
            t("127.0.0.15:5060", Proto::Tcp),
            t("127.0.0.14:5060", Proto::Tcp)
        ])
    );
}

#[test]
fn re_resolution_when_the_ttl_runs_out() {
    let now = Instant::now();
    let mut s = lab();
    let mut loc = Locator::new(cfg("sip:sip.test"), IdGen::new(1), now).unwrap();
    s.drive(&mut loc, now);
    s.asked.clear();

    // Early wake-up: nothing asked.
    loc.handle_input(Input::Timeout, now + Duration::from_secs(60));
    assert_eq!(s.drive(&mut loc, now + Duration::from_secs(60)), vec![]);
    assert!(s.asked.is_empty());

    // The SRV's TTL ran out; meanwhile kam2 moved and kam1 is gone.
    s.set(
        "_sip._tcp.sip.test",
        RecordType::Srv,
        Answer::Records {
            records: Records::Srv(vec![Srv {
                priority: 1,
                weight: 1,
                port: 5062,
                target: "kam2.sip.test".to_owned(),
            }]),
            ttl: 10,
        },
    );
    let later = now + Duration::from_secs(120);
    loc.handle_input(Input::Timeout, later);
    let outs = s.drive(&mut loc, later);
    assert_eq!(s.asked[0], q("sip.test", RecordType::Naptr));
    assert_eq!(
        outs,
        vec![
            Output::Targets(vec![t("127.0.0.15:5062", Proto::Tcp)]),
            Output::WakeAt(later + Duration::from_secs(10)),
        ]
    );
}

#[test]
fn old_list_kept_while_the_dns_fails() {
    let now = Instant::now();
    let mut s = lab();
    let mut loc = Locator::new(cfg("sip:sip.test"), IdGen::new(1), now).unwrap();
    let first = last_targets(&s.drive(&mut loc, now)).unwrap();
    for (name, rtype) in [
        ("sip.test", RecordType::Naptr),
        ("_sip._tcp.sip.test", RecordType::Srv),
        ("_sip._udp.sip.test", RecordType::Srv),
        ("sip.test", RecordType::A),
    ] {
        s.set(name, rtype, Answer::Failed("SERVFAIL".to_owned()));
    }
    let later = now + Duration::from_secs(120);
    loc.handle_input(Input::Timeout, later);
    let outs = s.drive(&mut loc, later);
    // No new list; a retry after `retry`.
    assert_eq!(outs, vec![Output::WakeAt(later + Duration::from_secs(5))]);
    assert_eq!(loc.targets(later), first);
}

#[test]
fn nothing_resolvable_gives_an_empty_list_and_a_retry() {
    let now = Instant::now();
    let mut s = Script::new();
    let mut loc = Locator::new(cfg("sip:nowhere.test"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(
        outs,
        vec![
            Output::Targets(vec![]),
            Output::WakeAt(now + Duration::from_secs(5))
        ]
    );
}

#[test]
fn srv_target_dot_means_no_service() {
    let now = Instant::now();
    let mut s = Script::new()
        .srv("_sip._udp.ex.test", &[(0, 0, 0, ".")], 300)
        .srv("_sip._tcp.ex.test", &[(0, 0, 5060, "t.ex.test")], 300)
        .a("t.ex.test", &["192.0.2.5"], 300);
    let mut loc = Locator::new(cfg("sip:ex.test"), IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(
        last_targets(&outs),
        Some(vec![t("192.0.2.5:5060", Proto::Tcp)])
    );
}

#[test]
fn answers_to_no_pending_query_are_ignored() {
    let now = Instant::now();
    let mut loc = Locator::new(cfg("sip:sip.test"), IdGen::new(1), now).unwrap();
    assert_eq!(
        loc.poll_output(),
        Some(Output::Query(q("sip.test", RecordType::Naptr)))
    );
    loc.handle_input(
        Input::Answer {
            query: q("evil.test", RecordType::A),
            answer: Answer::Records {
                records: Records::Addrs(vec!["192.0.2.66".parse().unwrap()]),
                ttl: 1,
            },
        },
        now,
    );
    assert_eq!(loc.poll_output(), None);
    // A wrong record type in an answer counts as no records: SRV guesses follow.
    loc.handle_input(
        Input::Answer {
            query: q("sip.test", RecordType::Naptr),
            answer: Answer::Records {
                records: Records::Addrs(vec!["192.0.2.66".parse().unwrap()]),
                ttl: 1,
            },
        },
        now,
    );
    assert_eq!(
        loc.poll_output(),
        Some(Output::Query(q("_sip._udp.sip.test", RecordType::Srv)))
    );
}

#[test]
fn ipv6_addresses_only_when_asked_for() {
    let now = Instant::now();
    let mut s = Script::new();
    s.set(
        "ex.test",
        RecordType::Aaaa,
        Answer::Records {
            records: Records::Addrs(vec!["2001:db8::1".parse().unwrap()]),
            ttl: 300,
        },
    );
    let mut s = s.a("ex.test", &["192.0.2.1"], 300);
    let mut c = cfg("sip:ex.test:5060");
    c.ipv6 = true;
    let mut loc = Locator::new(c, IdGen::new(1), now).unwrap();
    let outs = s.drive(&mut loc, now);
    assert_eq!(
        last_targets(&outs),
        Some(vec![
            t("192.0.2.1:5060", Proto::Udp),
            t("[2001:db8::1]:5060", Proto::Udp)
        ])
    );
    s.asked.clear();
    let mut loc = Locator::new(cfg("sip:ex.test:5060"), IdGen::new(1), now).unwrap();
    s.drive(&mut loc, now);
    assert_eq!(s.asked, vec![q("ex.test", RecordType::A)]);
}

#[test]
fn weights_pick_in_proportion_and_priority_always_wins() {
    let recs = vec![
        Srv {
            priority: 10,
            weight: 60,
            port: 1,
            target: "a".to_owned(),
        },
        Srv {
            priority: 10,
            weight: 30,
            port: 2,
            target: "b".to_owned(),
        },
        Srv {
            priority: 10,
            weight: 10,
            port: 3,
            target: "c".to_owned(),
        },
        Srv {
            priority: 5,
            weight: 0,
            port: 4,
            target: "top".to_owned(),
        },
        Srv {
            priority: 20,
            weight: 0,
            port: 5,
            target: "last".to_owned(),
        },
    ];
    let mut rng = IdGen::new(42);
    let mut first = HashMap::new();
    const N: usize = 20_000;
    for _ in 0..N {
        let o = order_srv(recs.clone(), &mut rng);
        assert_eq!(o[0].target, "top");
        assert_eq!(o[4].target, "last");
        let mut mid: Vec<&str> = o[1..4].iter().map(|s| s.target.as_str()).collect();
        *first.entry(mid[0].to_owned()).or_insert(0usize) += 1;
        mid.sort();
        assert_eq!(mid, vec!["a", "b", "c"]);
    }
    // Expected shares 60/30/10 % (weights out of 100, r in 0..=100: ±1 %); ±2 % slack.
    for (name, share) in [("a", 0.60), ("b", 0.30), ("c", 0.10)] {
        let got = first[name] as f64 / N as f64;
        assert!((got - share).abs() < 0.02, "{name}: {got} vs {share}");
    }
}

#[test]
fn zero_weights_still_all_used_and_deterministic_per_seed() {
    let recs: Vec<Srv> = (0..4)
        .map(|i| Srv {
            priority: 0,
            weight: 0,
            port: i,
            target: format!("h{i}"),
        })
        .collect();
    let a = order_srv(recs.clone(), &mut IdGen::new(7));
    let b = order_srv(recs.clone(), &mut IdGen::new(7));
    assert_eq!(a, b);
    assert_eq!(a.len(), 4);
    // A zero-weight record sorts before weighted ones, so with r = 0 it is picked first.
    let mixed = vec![
        Srv {
            priority: 0,
            weight: 100,
            port: 1,
            target: "w".to_owned(),
        },
        Srv {
            priority: 0,
            weight: 0,
            port: 2,
            target: "z".to_owned(),
        },
    ];
    let mut zero_first = 0;
    let mut rng = IdGen::new(3);
    for _ in 0..10_100 {
        if order_srv(mixed.clone(), &mut rng)[0].target == "z" {
            zero_first += 1;
        }
    }
    // r is uniform in 0..=100: "z" first only when r = 0, about 1 in 101.
    assert!((50..200).contains(&zero_first), "{zero_first}");
}
