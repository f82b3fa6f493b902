//! Fault containment (issue 14: a fault in one pair stays in that pair).
//!
//! The translators feed each pair's (or presentity's) machine inside [`contain`]: a panic
//! there ends that pair cleanly (the caller decides how) instead of unwinding through the
//! actor, which would end the actor and every pair it holds. [`inject`] is the test hook that
//! makes the next input of one chosen pair panic; [`tripwire`] is the same hook outside the
//! containment (a fault that ends a whole shard actor, which the registry's supervisor then
//! restarts).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static ARMED: AtomicBool = AtomicBool::new(false);
static TARGETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Test hook: the next input handled for a pair or presentity whose key (the SIP presentity's
/// JID for subscriber pairs, X for XMPP presentities; a NOTIFY's Call-ID for a subscriber
/// shard's [`tripwire`]) equals `key` panics, once.
#[doc(hidden)]
pub fn inject(key: &str) {
    if let Ok(mut t) = TARGETS.lock() {
        t.push(key.to_owned());
        ARMED.store(true, Ordering::Release);
    }
}

/// Panics if [`inject`] armed this key (one relaxed load when nothing is armed).
pub(crate) fn tripwire(key: &str) {
    if !ARMED.load(Ordering::Acquire) {
        return;
    }
    let hit = TARGETS
        .lock()
        .map(|mut t| match t.iter().position(|k| k == key) {
            Some(i) => {
                t.swap_remove(i);
                ARMED.store(!t.is_empty(), Ordering::Release);
                true
            }
            None => false,
        })
        .unwrap_or(false);
    if hit {
        panic!("fault injected for {key}");
    }
}

/// Runs `f` on the machine `target` (named by `key`, e.g. its presentity); a panic is caught
/// and returned as its message, logged with the key and counted
/// (`pua_xmpp_faults_contained_total{kind}`).
pub(crate) fn contain<T: ?Sized, R>(
    kind: &'static str,
    target: &mut T,
    key: impl Fn(&T) -> &str,
    f: impl FnOnce(&mut T) -> R,
) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(|| {
        tripwire(key(target));
        f(target)
    }))
    .map_err(|payload| {
        let key = key(target);
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        tracing::error!(kind, pair = key, error = %msg, "fault contained: the pair is ended, the others carry on");
        metrics::counter!("pua_xmpp_faults_contained_total", "kind" => kind).increment(1);
        msg
    })
}
