//! The `pua_xmpp_subscriptions` gauges and the request latency histograms, with handles cached
//! per thread (the macros hash the name and labels and look the key up on every call).

use pua_xmpp::sip::Method;
use pua_xmpp::subscriber;
use std::time::Instant;

/// The state label of a subscriber pair, for the `pua_xmpp_subscriptions` gauge.
pub(crate) fn phase_label(p: subscriber::Phase) -> &'static str {
    match p {
        subscriber::Phase::Idle => "idle",
        subscriber::Phase::Waiting { .. } => "waiting",
        subscriber::Phase::Pending => "pending",
        subscriber::Phase::Active => "active",
        subscriber::Phase::Unsubscribing => "ending",
        subscriber::Phase::Backoff => "retrying",
        subscriber::Phase::Done => "done",
    }
}

pub(crate) fn gauge_move(
    direction: &'static str,
    from: Option<&'static str>,
    to: Option<&'static str>,
) {
    if from == to {
        return;
    }
    if let Some(f) = from {
        with_gauge(direction, f, |g| g.decrement(1.0));
    }
    if let Some(t) = to {
        with_gauge(direction, t, |g| g.increment(1.0));
    }
}

thread_local! {
    /// This thread's handles of the `pua_xmpp_subscriptions` gauges, by (direction, state):
    /// `metrics::gauge!` hashes the name and labels and looks the key up in the recorder's
    /// registry on every call, a few percent of the set-up path when every input moves a pair.
    static GAUGES: std::cell::RefCell<Vec<(&'static str, &'static str, metrics::Gauge)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// The same for the three latency histograms (NOTIFY, PUBLISH, SUBSCRIBE).
    static LATENCY: std::cell::OnceCell<[metrics::Histogram; 3]> =
        const { std::cell::OnceCell::new() };
}

fn with_gauge(direction: &'static str, state: &'static str, f: impl FnOnce(&metrics::Gauge)) {
    GAUGES.with_borrow_mut(|cache| {
        if let Some((_, _, g)) = cache
            .iter()
            .find(|(d, s, _)| *d == direction && *s == state)
        {
            return f(g);
        }
        let g =
            metrics::gauge!("pua_xmpp_subscriptions", "direction" => direction, "state" => state);
        f(&g);
        cache.push((direction, state, g));
    });
}

/// Records how long a request of ours took to get its final response.
pub(crate) fn observe_latency(method: &Method, sent: Instant) {
    let secs = sent.elapsed().as_secs_f64();
    let which = match method {
        Method::Notify => 0,
        Method::Publish => 1,
        _ => 2,
    };
    LATENCY.with(|h| {
        let h = h.get_or_init(|| {
            [
                metrics::histogram!("pua_xmpp_notify_latency_seconds"),
                metrics::histogram!("pua_xmpp_publish_latency_seconds"),
                metrics::histogram!("pua_xmpp_subscribe_latency_seconds"),
            ]
        });
        h[which].record(secs);
    });
}

/// The labels of [`phase_label`], in one order.
const PHASES: [&str; 7] = [
    "idle", "waiting", "pending", "active", "ending", "retrying", "done",
];

/// One subscriber shard's share of the `pua_xmpp_subscriptions{direction="xmpp_to_sip"}`
/// gauges: when the shard dies, the registry takes its pairs off the gauges
/// ([`ShardGauges::forget`]) before the restarted shard counts the restored ones again.
#[derive(Default, Debug)]
pub struct ShardGauges {
    counts: [std::sync::atomic::AtomicI64; 7],
}

impl ShardGauges {
    /// A pair of this shard moved from one phase to another (`None`: created or ended).
    pub(crate) fn moved(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if from == to {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        for (label, d) in [(from, -1), (to, 1)] {
            if let Some(i) = label.and_then(|l| PHASES.iter().position(|p| *p == l)) {
                self.counts[i].fetch_add(d, Relaxed);
            }
        }
        gauge_move("xmpp_to_sip", from, to);
    }

    /// Takes every pair this shard counted off the gauges (the shard died).
    pub(crate) fn forget(&self) {
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.swap(0, std::sync::atomic::Ordering::Relaxed);
            if n > 0 {
                with_gauge("xmpp_to_sip", PHASES[i], |g| g.decrement(n as f64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn a_shard_counts_its_pairs_by_phase_and_forgets_them_when_it_dies() {
        let g = ShardGauges::default();
        g.moved(None, Some("waiting"));
        g.moved(None, Some("waiting"));
        g.moved(Some("waiting"), Some("active"));
        g.moved(Some("active"), Some("active"));
        let count = |l: &str| {
            let i = PHASES.iter().position(|p| *p == l).expect("label");
            g.counts[i].load(Relaxed)
        };
        assert_eq!((count("waiting"), count("active")), (1, 1));
        g.moved(Some("waiting"), None);
        assert_eq!((count("waiting"), count("active")), (0, 1));
        g.forget();
        assert!(g.counts.iter().all(|c| c.load(Relaxed) == 0));
        for p in [
            subscriber::Phase::Idle,
            subscriber::Phase::Pending,
            subscriber::Phase::Active,
            subscriber::Phase::Unsubscribing,
            subscriber::Phase::Backoff,
            subscriber::Phase::Done,
        ] {
            assert!(PHASES.contains(&phase_label(p)));
        }
    }
}
