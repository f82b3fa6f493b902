//! Results: the JSON shape and the human table.

use serde::Serialize;
use std::collections::BTreeMap;

/// Latency percentiles in milliseconds.
#[derive(Serialize, Default, Clone, Debug, PartialEq)]
pub struct Lat {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Percentiles of latencies given in µs (sorted here).
pub fn percentiles(mut us: Vec<u32>) -> Lat {
    if us.is_empty() {
        return Lat::default();
    }
    us.sort_unstable();
    let at = |p: f64| {
        let i = ((p / 100.0) * (us.len() - 1) as f64).round() as usize;
        us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    Lat {
        p50_ms: at(50.0),
        p90_ms: at(90.0),
        p99_ms: at(99.0),
        max_ms: at(100.0),
    }
}

#[derive(Serialize, Default, Debug)]
pub struct Setup {
    pub requested: usize,
    pub completed: usize,
    /// From the first request sent to the last confirmation.
    pub secs: f64,
    pub per_sec: f64,
    pub latency: Lat,
    pub timed_out: bool,
    /// Datagrams dropped by the kernel at the gateway's / the tool's SIP socket during set-up.
    pub gateway_udp_drops: Option<u64>,
    pub tool_udp_drops: Option<u64>,
    /// CPU% (100 = one core) of the gateway and of this tool over the set-up (from /proc).
    pub gateway_cpu_pct: Option<f64>,
    pub tool_cpu_pct: Option<f64>,
}

#[derive(Serialize, Default, Debug)]
pub struct Memory {
    pub gateway_rss_before_kb: Option<u64>,
    pub gateway_rss_after_setup_kb: Option<u64>,
    pub bytes_per_subscription: Option<f64>,
    /// IM (no set-up): after the last step's grace period.
    pub gateway_rss_after_run_kb: Option<u64>,
}

#[derive(Serialize, Default, Debug)]
pub struct Step {
    /// IM: `x2s` or `s2x` (the other fields are for this direction's messages only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Per direction for IM.
    pub target_rate: u64,
    pub send_secs: f64,
    pub sent: u64,
    pub sent_per_sec: f64,
    /// Updates that produced their stanza (a) / NOTIFY (b) by the end of the grace period.
    pub delivered: u64,
    pub delivered_per_sec: f64,
    pub lost: u64,
    pub loss_pct: f64,
    /// Arrived after the grace period (counted as lost above).
    pub late: u64,
    pub duplicates: u64,
    pub latency: Lat,
    /// IM: error stanzas to our stanzas (x2s) or non-2xx final responses to our MESSAGEs
    /// (s2x).
    pub errors: u64,
    /// IM s2x: final responses to our MESSAGEs, and their latency (the gateway answers 202
    /// after its bounce wait, `[im] bounce_wait_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_responses: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_response_latency: Option<Lat>,
    pub gateway_cpu_pct: Option<f64>,
    pub gateway_peak_rss_kb: Option<u64>,
    pub tool_cpu_pct: Option<f64>,
    /// Datagrams the kernel dropped at the gateway's / the tool's SIP UDP socket (receive
    /// buffer full) during the step and its grace period.
    pub gateway_udp_drops: Option<u64>,
    pub tool_udp_drops: Option<u64>,
    /// Counter changes over the step and its grace period.
    pub counters: BTreeMap<String, u64>,
    /// The send table was full: the step ended early.
    pub truncated: bool,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub scenario: String,
    pub n: usize,
    pub component: String,
    pub gateway_pid: Vec<u32>,
    pub setup: Setup,
    pub memory: Memory,
    pub steps: Vec<Step>,
    /// Totals over the whole run.
    pub counters: BTreeMap<String, u64>,
    /// Response codes the gateway sent to our NOTIFYs (a) or SUBSCRIBEs (b).
    pub response_codes: BTreeMap<u16, u64>,
    /// IM: the gateway's error stanzas to our messages, by condition.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_conditions: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.0}"))
}

/// The set-up and memory lines of scenarios a and b.
fn print_setup(r: &Report) {
    let s = &r.setup;
    println!(
        "set-up: {}/{} in {:.2} s = {:.0} subscriptions/s; latency p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms{}",
        s.completed,
        s.requested,
        s.secs,
        s.per_sec,
        s.latency.p50_ms,
        s.latency.p90_ms,
        s.latency.p99_ms,
        s.latency.max_ms,
        if s.timed_out { " (TIMED OUT)" } else { "" }
    );
    if let (Some(g), Some(t)) = (s.gateway_cpu_pct, s.tool_cpu_pct) {
        // CPU% over the set-up loop, which ends with the last confirmation.
        let per = if s.per_sec > 0.0 {
            format!(
                ", gateway {:.1} µs of CPU per subscription",
                g * 1e4 / s.per_sec
            )
        } else {
            String::new()
        };
        println!("set-up CPU: gateway {g:.0} %, tool {t:.0} %{per}");
    }
    if s.gateway_udp_drops.unwrap_or(0) + s.tool_udp_drops.unwrap_or(0) > 0 {
        println!(
            "set-up UDP drops (receive buffer full): gateway {}, tool {}",
            s.gateway_udp_drops.map_or("-".into(), |v| v.to_string()),
            s.tool_udp_drops.map_or("-".into(), |v| v.to_string())
        );
    }
    let m = &r.memory;
    println!(
        "gateway RSS: before {} KiB, after set-up {} KiB, {} bytes/subscription",
        m.gateway_rss_before_kb
            .map_or("-".into(), |v| v.to_string()),
        m.gateway_rss_after_setup_kb
            .map_or("-".into(), |v| v.to_string()),
        opt(m.bytes_per_subscription)
    );
}

/// The human-readable table.
pub fn print(r: &Report) {
    println!(
        "scenario {} (n={}, component {})",
        r.scenario, r.n, r.component
    );
    let im = r.steps.iter().any(|st| st.direction.is_some());
    if im {
        let m = &r.memory;
        println!(
            "gateway RSS: before {} KiB, after the ladder {} KiB",
            m.gateway_rss_before_kb
                .map_or("-".into(), |v| v.to_string()),
            m.gateway_rss_after_run_kb
                .map_or("-".into(), |v| v.to_string()),
        );
    } else {
        print_setup(r);
    }
    println!(
        "{}{:>8} {:>9} {:>9} {:>8} {:>7} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>6} {:>8} {:>8}",
        if im { "dir " } else { "" },
        "target/s",
        "sent/s",
        "deliv/s",
        "lost",
        "loss%",
        "late",
        "dups",
        "p50ms",
        "p90ms",
        "p99ms",
        "maxms",
        "gwCPU%",
        "gwRSSmax",
        "tool%",
        "gwDrops",
        "ourDrops"
    );
    for st in &r.steps {
        println!(
            "{}{:>8} {:>9.0} {:>9.0} {:>8} {:>7.2} {:>5} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>9} {:>6} {:>8} {:>8}{}",
            st.direction
                .as_deref()
                .map_or(String::new(), |d| format!("{d:<4}")),
            st.target_rate,
            st.sent_per_sec,
            st.delivered_per_sec,
            st.lost,
            st.loss_pct,
            st.late,
            st.duplicates,
            st.latency.p50_ms,
            st.latency.p90_ms,
            st.latency.p99_ms,
            st.latency.max_ms,
            opt(st.gateway_cpu_pct),
            st.gateway_peak_rss_kb
                .map_or("-".into(), |v| format!("{}M", v / 1024)),
            opt(st.tool_cpu_pct),
            st.gateway_udp_drops.map_or("-".into(), |v| v.to_string()),
            st.tool_udp_drops.map_or("-".into(), |v| v.to_string()),
            if st.truncated { " (truncated)" } else { "" }
        );
    }
    if im {
        println!(
            "{:<4}{:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "dir", "target/s", "errors", "finals", "fin p50", "fin p90", "fin p99", "fin max"
        );
        for st in &r.steps {
            let (fin, l) = match (&st.final_responses, &st.final_response_latency) {
                (Some(n), Some(l)) => (n.to_string(), l.clone()),
                _ => ("-".into(), Lat::default()),
            };
            println!(
                "{:<4}{:>8} {:>7} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                st.direction.as_deref().unwrap_or(""),
                st.target_rate,
                st.errors,
                fin,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms
            );
        }
    }
    if !r.response_codes.is_empty() {
        let codes: Vec<String> = r
            .response_codes
            .iter()
            .map(|(c, n)| format!("{c}x{n}"))
            .collect();
        println!("gateway responses: {}", codes.join(" "));
    }
    if !r.error_conditions.is_empty() {
        let c: Vec<String> = r
            .error_conditions
            .iter()
            .map(|(k, n)| format!("{k}x{n}"))
            .collect();
        println!("gateway error stanzas: {}", c.join(" "));
    }
    let nz: Vec<String> = r
        .counters
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("counters: {}", nz.join(" "));
    for n in &r.notes {
        println!("note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(
            percentiles(v),
            Lat {
                p50_ms: 51.0,
                p90_ms: 90.0,
                p99_ms: 99.0,
                max_ms: 100.0
            }
        );
        assert_eq!(percentiles(Vec::new()), Lat::default());
    }
}
