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
