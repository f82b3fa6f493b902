//! pua-xmpp-bench: load tool for SIP/XMPP presence gateways (issue 7). It plays both peers of
//! the gateway — the XMPP server (XEP-0114 component listener) and the SIP presence server /
//! SIP watchers — so that only the gateway is measured. It relies on nothing but the wire
//! protocols, so the same numbers can be taken for any gateway that connects as a component.

mod cli;
mod peer;
mod procstat;
mod report;
mod shared;
mod sip;
mod tls;
mod xmpp;

use cli::{Args, Command, ImDir, Scenario};
use peer::{Ctx, Route, LINK_CLOSED, LINK_REFUSED, LINK_UP, LINK_WAITING};
use procstat::CpuMark;
use report::{percentiles, Memory, Report, Setup, Step};
use shared::{Shared, C, C_NAMES};
use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most updates one run may send (the per-update tables are sized from the ladder).
const MAX_UPDATES: u64 = 100_000_000;
/// UDP socket buffers: bursts of a paced tick must not overflow our own socket.
const UDP_BUFFER: usize = 8 << 20;

/// mimalloc, as in the gateway: the tool shares the machine with the gateway it measures, and
/// glibc malloc/free were a few per cent of its instructions.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match cli::parse(&argv) {
        Ok(Command::Run(a)) => *a,
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::TlsInit(a)) => {
            return match tls::ensure(&a.tls_dir, &tls_ips(&a)) {
                Ok(made) => {
                    eprintln!(
                        "{}: {}",
                        a.tls_dir.display(),
                        if made { "certificates made" } else { "kept" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pua-xmpp-bench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            eprintln!("pua-xmpp-bench: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pua-xmpp-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The IPs the bench certificates name: ours and the gateway's (and 127.0.0.1).
fn tls_ips(a: &Args) -> Vec<std::net::IpAddr> {
    let mut v = vec![std::net::IpAddr::from([127, 0, 0, 1]), a.sip_listen.ip()];
    v.extend(a.sip_tls_listen.map(|s| s.ip()));
    v.push(a.gateway_sip.ip());
    v
}

fn bind_udp(args: &Args) -> Result<UdpSocket, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = args.sip_listen;
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| format!("UDP socket: {e}"))?;
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    s.bind(&addr.into())
        .map_err(|e| format!("--sip-listen {addr}: {e}"))?;
    let u: UdpSocket = s.into();
    u.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| format!("UDP socket: {e}"))?;
    Ok(u)
}

fn run(args: Args) -> Result<(), String> {
    let updates: u64 = args
        .rates
        .iter()
        .map(|&r| (r as f64 * args.step_secs * 1.05) as u64 + 1000)
        .sum::<u64>()
        * match args.scenario {
            Scenario::Im => args.im_multiplier(),
            _ => 1,
        };
    if updates > MAX_UPDATES {
        return Err(format!(
            "the ladder would send {updates} updates; at most {MAX_UPDATES} per run"
        ));
    }
    let sock = bind_udp(&args)?;
    let sip_listener = TcpListener::bind(args.sip_listen)
        .map_err(|e| format!("--sip-listen {} (TCP): {e}", args.sip_listen))?;
    sip_listener
        .set_nonblocking(true)
        .map_err(|e| format!("SIP listener: {e}"))?;
    let tls_listener = match args.sip_tls_listen {
        None => None,
        Some(addr) => {
            tls::ensure(&args.tls_dir, &tls_ips(&args))?;
            let cfg = tls::server_config(&args.tls_dir)?;
            let l = TcpListener::bind(addr).map_err(|e| format!("--sip-tls-listen {addr}: {e}"))?;
            l.set_nonblocking(true)
                .map_err(|e| format!("SIP TLS listener: {e}"))?;
            Some((l, cfg))
        }
    };
    let listener = TcpListener::bind(args.xmpp_listen)
        .map_err(|e| format!("--xmpp-listen {}: {e}", args.xmpp_listen))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let ctx = Arc::new(Ctx {
        run: format!("{:x}", nanos ^ std::process::id()),
        shared: Shared::new(
            args.n,
            updates as usize,
            match args.scenario {
                Scenario::Im => updates as usize,
                _ => 0,
            },
        ),
        sock,
        dialogs: Mutex::new(match args.scenario {
            Scenario::A => peer::Dialogs::with_capacity(args.n),
            Scenario::B | Scenario::Im => peer::Dialogs::default(),
        }),
        link: Default::default(),
        xmpp_tx: Mutex::new(None),
        xmpp_backlog: Default::default(),
        b_route: Mutex::new(Route::Udp(args.gateway_sip)),
        suffixes: peer::Suffixes::of(&args),
        args,
    });
    let mut notes = Vec::new();
    let a = &ctx.args;
    eprintln!(
        "waiting for the gateway's component connection on {} (up to {} s)...",
        a.xmpp_listen, a.connect_timeout_secs
    );
    let sip_thread = {
        let c = ctx.clone();
        std::thread::spawn(move || peer::sip_rx_loop(&c))
    };

    // Accept the component (one connection), bounded.
    let deadline = Instant::now() + Duration::from_secs_f64(a.connect_timeout_secs);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break Some(s),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let tcp_thread = {
        let c = ctx.clone();
        std::thread::spawn(move || peer::sip_tcp_accept_loop(c, sip_listener, None))
    };
    let mut threads = vec![sip_thread, tcp_thread];
    if let Some((l, cfg)) = tls_listener {
        let c = ctx.clone();
        threads.push(std::thread::spawn(move || {
            peer::sip_tcp_accept_loop(c, l, Some(cfg))
        }));
    }
    let a = &ctx.args;
    let sip_tcp_out = match a.scenario {
        Scenario::B => a.sip_tcp,
        Scenario::Im => a.im_dir != ImDir::X2s && a.im_tcp(),
        Scenario::A => false,
    };
    if sip_tcp_out {
        match peer::sip_tcp_connect(&ctx, &mut threads) {
            Ok(r) => *ctx.b_route.lock().unwrap_or_else(|e| e.into_inner()) = r,
            Err(e) => {
                ctx.shared.stop.store(true, Ordering::Relaxed);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
    }
    let result = match stream {
        None => Err("the gateway did not connect its component in time".to_owned()),
        Some(stream) => {
            let prepared = stream
                .set_nonblocking(false)
                .and_then(|_| stream.set_nodelay(true))
                .and_then(|_| stream.set_read_timeout(Some(Duration::from_millis(100))))
                // Bounded writes: the writer sees the stop flag even when the gateway no
                // longer reads (the timeout is the socket's, shared with the clone).
                .and_then(|_| stream.set_write_timeout(Some(Duration::from_millis(200))))
                .and_then(|_| stream.try_clone());
            match prepared {
                Err(e) => Err(format!("component socket: {e}")),
                Ok(wstream) => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    *ctx.xmpp_tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
                    let c = ctx.clone();
                    threads.push(std::thread::spawn(move || {
                        peer::xmpp_writer_loop(&c, wstream, rx)
                    }));
                    let c = ctx.clone();
                    threads.push(std::thread::spawn(move || {
                        peer::xmpp_reader_loop(&c, stream)
                    }));
                    measure(&ctx, &mut notes)
                }
            }
        }
    };
    ctx.shared.stop.store(true, Ordering::Relaxed);
    *ctx.xmpp_tx.lock().unwrap_or_else(|e| e.into_inner()) = None;
    for t in threads {
        let _ = t.join();
    }
    // The dialog table is not freed one string at a time just before exit (for a large N
    // that was a visible share of the tool's instructions); the OS reclaims it.
    let ctx = std::mem::ManuallyDrop::new(ctx);
    let mut report = result?;
    report.notes = notes;
    report.counters = C_NAMES
        .iter()
        .zip(ctx.shared.counters())
        .map(|(k, v)| ((*k).to_owned(), v))
        .collect();
    report.response_codes = ctx
        .shared
        .codes
        .iter()
        .enumerate()
        .filter_map(|(c, n)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then_some((c as u16, n))
        })
        .collect();
    report.error_conditions = ctx
        .shared
        .error_conditions
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    report::print(&report);
    if let Some(path) = &ctx.args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| format!("JSON: {e}"))?;
        std::fs::write(path, text).map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Handshake wait, set-up, memory, ladder.
fn measure(ctx: &Ctx, notes: &mut Vec<String>) -> Result<Report, String> {
    let a = &ctx.args;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctx.link_state() == LINK_WAITING && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    match ctx.link_state() {
        LINK_UP => {}
        LINK_REFUSED => return Err("component handshake failed: wrong secret".into()),
        _ => return Err("component stream did not complete the handshake".into()),
    }
    let pid = Some(a.gateway_pid.as_slice());
    let rss_before = procstat::rss_kb_of(pid);
    if a.scenario == Scenario::Im {
        // No set-up: messages need no subscription. Memory is taken before and after the
        // ladder (the peak of each step is in its row).
        let steps = run_ladder(ctx, notes);
        let unmatched =
            ctx.shared.get(C::update_unmatched) + ctx.shared.get(C::message_unmatched_rx);
        if unmatched > 0 {
            notes.push(format!(
                "{unmatched} messages arrived whose n<seq> was never sent (foreign or corrupted text)"
            ));
        }
        if ctx.link_state() == LINK_CLOSED {
            notes.push("the gateway closed the component stream during the run".into());
        }
        let memory = Memory {
            gateway_rss_before_kb: rss_before,
            gateway_rss_after_run_kb: procstat::rss_kb_of(pid),
            ..Memory::default()
        };
        return Ok(report_shell(ctx, Setup::default(), memory, steps));
    }
    eprintln!("component connected; setting up {} subscriptions...", a.n);
    let setup = run_setup(ctx);
    eprintln!(
        "set-up: {}/{} done; letting the gateway settle 1 s",
        setup.completed, setup.requested
    );
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = procstat::rss_kb_of(pid);
    let memory = Memory {
        gateway_rss_before_kb: rss_before,
        gateway_rss_after_setup_kb: rss_after,
        bytes_per_subscription: match (rss_before, rss_after) {
            (Some(b), Some(af)) if setup.completed > 0 => {
                Some((af as f64 - b as f64) * 1024.0 / setup.completed as f64)
            }
            _ => None,
        },
        gateway_rss_after_run_kb: None,
    };
    if setup.completed == 0 {
        notes.push("no subscription was set up: ladder skipped".into());
        return Ok(report_shell(ctx, setup, memory, Vec::new()));
    }
    let steps = run_ladder(ctx, notes);
    let unmatched = ctx.shared.get(C::update_unmatched);
    if unmatched > 0 {
        notes.push(format!(
            "{unmatched} updates arrived whose n<seq> was never sent (foreign or corrupted text)"
        ));
    }
    if ctx.link_state() == LINK_CLOSED {
        notes.push("the gateway closed the component stream during the run".into());
    }
    Ok(report_shell(ctx, setup, memory, steps))
}

fn report_shell(ctx: &Ctx, setup: Setup, memory: Memory, steps: Vec<Step>) -> Report {
    Report {
        scenario: match ctx.args.scenario {
            Scenario::A => "a (SIP presentity -> XMPP watcher)".into(),
            Scenario::B => "b (XMPP presentity -> SIP watcher)".into(),
            Scenario::Im => format!(
                "im ({}, body {} octets, our MESSAGEs over {})",
                match ctx.args.im_dir {
                    ImDir::X2s => "XMPP -> SIP",
                    ImDir::S2x => "SIP -> XMPP",
                    ImDir::Both => "both ways",
                },
                ctx.args.body_bytes,
                if ctx.args.im_tcp() { "TCP" } else { "UDP" }
            ),
        },
        n: ctx.args.n,
        component: ctx.args.component.clone(),
        gateway_pid: ctx.args.gateway_pid.clone(),
        setup,
        memory,
        steps,
        counters: BTreeMap::new(),
        response_codes: BTreeMap::new(),
        error_conditions: BTreeMap::new(),
        notes: Vec::new(),
    }
}

/// Kernel drops at the gateway's and our SIP UDP sockets.
fn drops(a: &Args) -> (Option<u64>, Option<u64>) {
    (
        procstat::udp_drops(a.gateway_sip),
        procstat::udp_drops(a.sip_listen),
    )
}

fn delta(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

/// Sends the set-up requests `from..to`: subscribe stanzas (a) or SUBSCRIBEs (b).
fn send_setup(ctx: &Ctx, from: usize, to: usize, sip_buf: &mut Vec<u8>) {
    let a = &ctx.args;
    match a.scenario {
        Scenario::A => {
            let mut s = Vec::with_capacity((to - from) * 120);
            for i in (from..to).map(|i| a.setup_index(i)) {
                ctx.write_a_subscribe(&mut s, i);
                ctx.shared.mark_setup_sent(i);
            }
            ctx.shared.add(C::stanza_tx, (to - from) as u64);
            ctx.send_xmpp(s);
        }
        // No set-up in the IM scenario (`measure` does not call it).
        Scenario::Im => {}
        Scenario::B => {
            let route = ctx
                .b_route
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for i in (from..to).map(|i| a.setup_index(i)) {
                ctx.write_subscribe(sip_buf, i, route.proto());
                ctx.shared.mark_setup_sent(i);
                ctx.send_sip(sip_buf, &route);
            }
        }
    }
}

/// Resends due, unanswered SUBSCRIBEs (T1 doubling up to T2, at most 10 times). `state` is
/// in sending order: its k-th entry is watcher `setup_index(k)`.
fn retransmit_subscribes(ctx: &Ctx, state: &mut [(u8, Instant)], buf: &mut Vec<u8>) {
    let now = Instant::now();
    let route = Route::Udp(ctx.args.gateway_sip);
    for (k, (tries, due)) in state.iter_mut().enumerate() {
        let i = ctx.args.setup_index(k);
        if *tries >= 10 || *due > now || ctx.shared.is_answered(i) {
            continue;
        }
        *tries += 1;
        let interval = (peer::T1 * (1u32 << (*tries).min(3))).min(Duration::from_secs(4));
        *due = now + interval;
        ctx.write_subscribe(buf, i, "UDP");
        ctx.shared.inc(C::subscribe_retransmissions);
        ctx.send_sip(buf, &route);
    }
}

/// N subscriptions with at most `setup_window` in flight; ends when all are confirmed, on
/// timeout, or when the component link drops.
fn run_setup(ctx: &Ctx) -> Setup {
    let a = &ctx.args;
    let s = &ctx.shared;
    let drops0 = drops(a);
    let pid = Some(a.gateway_pid.as_slice());
    let (gw0, me0) = (CpuMark::now(pid), CpuMark::now(None));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.setup_timeout_secs);
    let mut next = 0usize;
    let mut buf = Vec::with_capacity(1024);
    let tick = Duration::from_millis(a.tick_ms);
    let mut timed_out = false;
    let mut last_retx = Instant::now();
    // Scenario b over UDP: retransmissions of unanswered SUBSCRIBEs (count, next due).
    let mut b_retx: Vec<(u8, Instant)> = Vec::new();
    loop {
        let done = s.setup_done_count.load(Ordering::Relaxed);
        if done >= a.n || ctx.link_state() != LINK_UP {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        let inflight = next.saturating_sub(done);
        if inflight < a.setup_window && next < a.n {
            let k = (a.setup_window - inflight).min(a.n - next).min(2000);
            send_setup(ctx, next, next + k, &mut buf);
            let due = Instant::now() + peer::T1;
            b_retx.resize(next + k, (0, due));
            next += k;
        }
        if last_retx.elapsed() >= Duration::from_millis(50) {
            last_retx = Instant::now();
            match a.scenario {
                Scenario::A => ctx.retransmit_initial(),
                Scenario::B if !a.sip_tcp => retransmit_subscribes(ctx, &mut b_retx, &mut buf),
                Scenario::B | Scenario::Im => {}
            }
        }
        std::thread::sleep(tick);
    }
    let (gw1, me1) = (CpuMark::now(pid), CpuMark::now(None));
    let mut first = u64::MAX;
    let mut last = 0u64;
    let mut lats = Vec::with_capacity(a.n);
    for i in 0..a.n {
        let (Some(sa), Some(da)) = (s.setup_sent.get(i), s.setup_done.get(i)) else {
            continue;
        };
        let (sent, done) = (sa.load(Ordering::Relaxed), da.load(Ordering::Relaxed));
        if sent != 0 {
            first = first.min(sent);
        }
        if sent != 0 && done != 0 {
            last = last.max(done);
            lats.push((done.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
        }
    }
    let completed = lats.len();
    let secs = if completed > 0 && last > first {
        (last - first) as f64 / 1e9
    } else {
        0.0
    };
    Setup {
        requested: a.n,
        completed,
        secs,
        per_sec: if secs > 0.0 {
            completed as f64 / secs
        } else {
            0.0
        },
        latency: percentiles(lats),
        timed_out,
        gateway_udp_drops: delta(drops0.0, drops(a).0),
        tool_udp_drops: delta(drops0.1, drops(a).1),
        gateway_cpu_pct: gw0.pct_until(&gw1),
        tool_cpu_pct: me0.pct_until(&me1),
    }
}

/// Sends updates `from..from+k`; false when the table is full or the link is gone.
fn send_updates(ctx: &Ctx, targets: &[usize], from: u64, k: u64, buf: &mut Vec<u8>) -> bool {
    match ctx.args.scenario {
        Scenario::A => ctx.send_notify_batch(targets, from, k, buf),
        Scenario::Im => ctx.send_im_batch(from, k, buf),
        Scenario::B => {
            if targets.is_empty() {
                return false;
            }
            let mut s = String::with_capacity(k as usize * 140);
            for seq in from..from + k {
                let Some(&i) = targets.get((seq % targets.len() as u64) as usize) else {
                    return false;
                };
                if !ctx.shared.mark_sent(seq) {
                    return false;
                }
                ctx.write_b_presence(&mut s, i, &format!("n{seq}"), seq);
            }
            ctx.shared.add(C::stanza_tx, k);
            ctx.send_xmpp(s.into_bytes())
        }
    }
}

/// What happened to the updates (or IM messages) of one step.
#[derive(Default)]
struct Tally {
    sent: u64,
    delivered: u64,
    dups: u64,
    lats: Vec<u32>,
    /// IM: error stanzas (X->S) or non-2xx final responses (S->X).
    errors: u64,
    /// IM S->X: final responses received, and their latencies.
    responses: u64,
    resp_lats: Vec<u32>,
}

fn dir_name(d: ImDir) -> &'static str {
    match d {
        ImDir::X2s => "x2s",
        ImDir::S2x => "s2x",
        ImDir::Both => "both",
    }
}

/// Counts, over updates `range` (IM: those of direction `dir` only), those delivered, their
/// duplicates and latencies, and for IM the errors and final responses.
fn tally(s: &Shared, a: &Args, range: std::ops::Range<u64>, dir: Option<ImDir>) -> Tally {
    let mut t = Tally::default();
    for seq in range {
        if dir.is_some_and(|d| a.im_of(seq).0 != d) {
            continue;
        }
        let i = seq as usize;
        if s.sent_at
            .get(i)
            .is_some_and(|v| v.load(Ordering::Relaxed) != 0)
        {
            t.sent += 1;
        }
        if let Some(l) = s.lat_us.get(i).map(|v| v.load(Ordering::Relaxed)) {
            if l != 0 {
                t.lats.push(l - 1);
            }
        }
        if let Some(h) = s.hits.get(i).map(|v| v.load(Ordering::Relaxed)) {
            t.dups += u64::from(h.saturating_sub(1));
        }
        let code = s.resp_code.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
        match dir {
            Some(ImDir::S2x) if code != 0 => {
                t.responses += 1;
                if code >= 300 {
                    t.errors += 1;
                }
                if let Some(l) = s.resp_us.get(i).map(|v| v.load(Ordering::Relaxed)) {
                    if l != 0 {
                        t.resp_lats.push(l - 1);
                    }
                }
            }
            Some(_) if code == 1 => t.errors += 1,
            _ => {}
        }
    }
    t.delivered = t.lats.len() as u64;
    t
}

fn run_ladder(ctx: &Ctx, notes: &mut Vec<String>) -> Vec<Step> {
    let a = &ctx.args;
    let s = &ctx.shared;
    let pid = Some(a.gateway_pid.as_slice());
    // Targets: live dialogs (a) or set-up pairs (b).
    let targets: Vec<usize> = match a.scenario {
        Scenario::A => {
            let t = ctx.dialogs.lock().unwrap_or_else(|e| e.into_inner());
            (0..t.list.len())
                .filter(|&i| t.list.get(i).is_some_and(|d| d.alive))
                .collect()
        }
        Scenario::B => (0..a.n).filter(|&i| s.is_set_up(i)).collect(),
        Scenario::Im => Vec::new(),
    };
    notes.push(match a.scenario {
        Scenario::A => format!(
            "updates go round-robin over {} SIP dialogs (NOTIFY, note n<seq> -> <status>)",
            targets.len()
        ),
        Scenario::B => format!(
            "updates go round-robin over {} XMPP users (presence, status n<seq> -> PIDF <note>)",
            targets.len()
        ),
        Scenario::Im => format!(
            "messages go round-robin over {} pairs u<i>@{} <-> sip:s<i>@{} (body n<seq> + filler); \
             the rate is per direction",
            a.n, a.xmpp_domain, a.sip_domain
        ),
    });
    let mult = match a.scenario {
        Scenario::Im => a.im_multiplier(),
        _ => 1,
    };
    let tick = Duration::from_millis(a.tick_ms);
    let step_dur = Duration::from_secs_f64(a.step_secs);
    let grace = Duration::from_secs_f64(a.grace_secs);
    let mut next_seq = 0u64;
    let mut steps = Vec::new();
    let mut ranges = Vec::new();
    let mut buf = Vec::with_capacity(2048);
    for &rate in &a.rates {
        if ctx.link_state() != LINK_UP {
            notes.push(format!(
                "ladder stopped before {rate}/s: component link down"
            ));
            break;
        }
        eprintln!("step {rate}/s for {} s...", a.step_secs);
        let c0 = s.counters();
        let (gw0, me0) = (CpuMark::now(pid), CpuMark::now(None));
        let seq0 = next_seq;
        let drops0 = drops(a);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut peak = procstat::rss_kb_of(pid);
        let mut last_rss = Instant::now();
        let mut truncated = false;
        let burst = (rate * mult / 50).max(1);
        loop {
            let el = start.elapsed();
            if el >= step_dur {
                break;
            }
            let target = ((rate * mult) as f64 * el.as_secs_f64()) as u64;
            let k = target.saturating_sub(sent).min(burst);
            if k > 0 {
                if !send_updates(ctx, &targets, next_seq, k, &mut buf) {
                    truncated = true;
                    break;
                }
                next_seq += k;
                sent += k;
            }
            if last_rss.elapsed() >= Duration::from_millis(100) {
                peak = peak.max(procstat::rss_kb_of(pid));
                last_rss = Instant::now();
            }
            std::thread::sleep(tick);
        }
        let send_secs = start.elapsed().as_secs_f64();
        let (gw1, me1) = (CpuMark::now(pid), CpuMark::now(None));
        let grace_end = Instant::now() + grace;
        while Instant::now() < grace_end {
            std::thread::sleep(Duration::from_millis(100));
            peak = peak.max(procstat::rss_kb_of(pid));
        }
        let backlog = ctx.xmpp_backlog.load(Ordering::Relaxed);
        if backlog > 0 {
            notes.push(format!(
                "step {rate}/s: {backlog} octets of stanzas were still queued for the \
                 component stream after the grace period (the gateway reads it slower than \
                 the step's rate; their messages count as lost, or late)"
            ));
        }
        let c1 = s.counters();
        let counters: BTreeMap<String, u64> = C_NAMES
            .iter()
            .zip(c1.iter().zip(c0.iter()))
            .filter(|(_, (x, y))| x > y)
            .map(|(k, (x, y))| ((*k).to_owned(), x - y))
            .collect();
        let (gw_drops, tool_drops) = (delta(drops0.0, drops(a).0), delta(drops0.1, drops(a).1));
        // IM both ways: one row per direction, each with its own half of the messages.
        let dirs: Vec<Option<ImDir>> = match (a.scenario, a.im_dir) {
            (Scenario::Im, ImDir::Both) => vec![Some(ImDir::X2s), Some(ImDir::S2x)],
            (Scenario::Im, d) => vec![Some(d)],
            _ => vec![None],
        };
        for dir in dirs {
            let t = tally(s, a, seq0..next_seq, dir);
            let lost = t.sent.saturating_sub(t.delivered);
            ranges.push((seq0..next_seq, dir));
            steps.push(Step {
                direction: dir.map(|d| dir_name(d).to_owned()),
                target_rate: rate,
                send_secs,
                sent: t.sent,
                sent_per_sec: t.sent as f64 / send_secs,
                delivered: t.delivered,
                delivered_per_sec: t.delivered as f64 / send_secs,
                lost,
                loss_pct: if t.sent > 0 {
                    100.0 * lost as f64 / t.sent as f64
                } else {
                    0.0
                },
                late: 0,
                duplicates: t.dups,
                latency: percentiles(t.lats),
                errors: t.errors,
                final_responses: (dir == Some(ImDir::S2x)).then_some(t.responses),
                final_response_latency: (dir == Some(ImDir::S2x)).then(|| percentiles(t.resp_lats)),
                gateway_cpu_pct: gw0.pct_until(&gw1),
                gateway_peak_rss_kb: peak,
                tool_cpu_pct: me0.pct_until(&me1),
                gateway_udp_drops: gw_drops,
                tool_udp_drops: tool_drops,
                counters: counters.clone(),
                truncated,
            });
        }
        if truncated {
            notes.push(format!(
                "step {rate}/s ended early (send table full or link down)"
            ));
            break;
        }
    }
    // Arrivals after a step's grace period: recount now.
    for (st, (r, dir)) in steps.iter_mut().zip(ranges) {
        let t = tally(s, a, r, dir);
        st.late = t.delivered.saturating_sub(st.delivered);
    }
    steps
}
