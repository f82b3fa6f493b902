//! CPU time and resident memory of a process from /proc (Linux), so each step says whether the
//! gateway or the tool itself was the limit.

use std::time::Instant;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

fn path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// utime + stime in ticks.
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let s = std::fs::read_to_string(path(pid, "stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let mut f = rest.split_whitespace();
    // After ')': state(3) ... utime is field 14, stime 15 (1-based over the whole line).
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in KiB.
pub fn rss_kb(pid: Option<u32>) -> Option<u64> {
    let s = std::fs::read_to_string(path(pid, "status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Summed utime + stime of the watched processes: `None` = this process; several pids (a
/// multi-process server such as Kamailio) are summed; no pid at all gives `None`.
pub fn cpu_ticks_of(pids: Option<&[u32]>) -> Option<u64> {
    match pids {
        None => cpu_ticks(None),
        Some([]) => None,
        Some(p) => p.iter().map(|&x| cpu_ticks(Some(x))).sum(),
    }
}

/// Summed VmRSS (KiB) of the watched processes, as [`cpu_ticks_of`].
pub fn rss_kb_of(pids: Option<&[u32]>) -> Option<u64> {
    match pids {
        None => rss_kb(None),
        Some([]) => None,
        Some(p) => p.iter().map(|&x| rss_kb(Some(x))).sum(),
    }
}

/// Datagrams the kernel dropped on the UDP socket bound to `addr` (receive buffer full),
/// from the `drops` column of /proc/net/udp. IPv4 only.
pub fn udp_drops(addr: std::net::SocketAddr) -> Option<u64> {
    let std::net::SocketAddr::V4(v4) = addr else {
        return None;
    };
    // /proc/net/udp prints the address as the in-memory u32 in hex, then the port.
    let key = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some(key.as_str()))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .reduce(|a, b| a + b)
}

/// A CPU reading to diff against later.
#[derive(Clone, Copy)]
pub struct CpuMark {
    ticks: Option<u64>,
    at: Instant,
}

impl CpuMark {
    pub fn now(pids: Option<&[u32]>) -> CpuMark {
        CpuMark {
            ticks: cpu_ticks_of(pids),
            at: Instant::now(),
        }
    }

    /// CPU% (100 = one core) between two marks.
    pub fn pct_until(&self, later: &CpuMark) -> Option<f64> {
        let dt = later.at.duration_since(self.at).as_secs_f64();
        let d = later.ticks?.checked_sub(self.ticks?)? as f64 / USER_HZ;
        (dt > 0.0).then(|| 100.0 * d / dt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(cpu_ticks(None).is_some());
        assert!(rss_kb(None).is_some_and(|kb| kb > 0));
        let a = CpuMark::now(None);
        let b = CpuMark::now(None);
        let me = std::process::id();
        assert_eq!(cpu_ticks_of(Some(&[])), None);
        assert!(rss_kb_of(Some(&[me, me])).is_some_and(|kb| kb > 0));
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok();
        if let Some(addr) = sock.as_ref().and_then(|s| s.local_addr().ok()) {
            assert_eq!(udp_drops(addr), Some(0));
        }
        if let Some(p) = a.pct_until(&b) {
            assert!(p >= 0.0);
        }
    }
}
