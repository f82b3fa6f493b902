//! Runs the lease machine ([`pua_xmpp::lease`]) against the `gateway_lease` row (issue 17):
//! a standby instance blocks in [`wait_until_active`] before it binds or connects anything
//! (Prosody takes one connection per component, and the SIP address is the active one's);
//! once active, a thread of its own keeps renewing, and the process exits (code 3) the moment
//! the lease is lost, so a supervisor starts it again as a standby with fresh state. A graceful
//! stop releases the lease after the store's last flush ([`LeaseHandle::release`]).

use super::postgres::{Fence, LeaseAnswer, PgLease};
use super::StoreError;
use pua_xmpp::lease::{Input, Lease, LeaseConfig, Output, StepDownReason};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Exit code of an instance that lost its lease.
pub const EXIT_LEASE_LOST: i32 = 3;

/// A holder name unique to this process: host, pid and start time.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}:{}:{nanos:x}", std::process::id())
}

/// The running lease of the active instance.
pub struct LeaseHandle {
    stop: mpsc::Sender<mpsc::SyncSender<()>>,
}

impl LeaseHandle {
    /// Gives the lease up (after the graceful shutdown flushed the store), so the standby
    /// takes over at once instead of at the lease's expiry. Waits at most `timeout`.
    pub fn release(self, timeout: Duration) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.stop.send(done).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// Blocks until this instance holds the lease `name`, and returns the fence the store must
/// carry. The lease thread goes on renewing; losing the lease exits the process.
pub fn wait_until_active(
    url: &str,
    name: &str,
    holder: &str,
    cfg: LeaseConfig,
) -> Result<(Fence, LeaseHandle), StoreError> {
    cfg.check().map_err(StoreError::Backend)?;
    let (stop, stops) = mpsc::channel();
    let fence = Fence::new(name);
    tracing::info!(lease = %name, holder = %holder, "standby: waiting for the lease");
    let (tx, rx) = mpsc::sync_channel(1);
    let (url, name, holder, f) = (
        url.to_owned(),
        name.to_owned(),
        holder.to_owned(),
        fence.clone(),
    );
    std::thread::Builder::new()
        .name("lease".to_owned())
        .spawn(move || drive(&url, &name, &holder, cfg, &f, tx, stops))
        .map_err(|e| StoreError::Backend(format!("cannot start the lease thread: {e}")))?;

    rx.recv()
        .map_err(|_| StoreError::Backend("the lease thread stopped".to_owned()))?;
    Ok((fence, LeaseHandle { stop }))
}

fn drive(
    url: &str,
    name: &str,
    holder: &str,
    cfg: LeaseConfig,
    fence: &Fence,
    active: mpsc::SyncSender<()>,
    stops: mpsc::Receiver<mpsc::SyncSender<()>>,
) {
    let mut stopped: Option<mpsc::SyncSender<()>> = None;
    // The database may be away at start: keep trying, as a standby does anyway.
    let mut db = loop {
        match PgLease::open(url, name, holder) {
            Ok(db) => break db,
            Err(e) => {
                tracing::warn!(error = %e, "lease: database not reachable; retrying");
                std::thread::sleep(cfg.retry_every);
            }
        }
    };
    let mut lease = Lease::new(cfg, Instant::now());
    lease.handle_input(Input::Timeout, Instant::now());
    loop {
        while let Some(out) = lease.poll_output() {
            let answer = match out {
                Output::Acquire { id, ttl } => Some((id, db.acquire(ttl))),
                Output::Renew { id, fence, ttl } => Some((id, db.renew(fence, ttl))),
                Output::Activate { fence: f } => {
                    fence.set(f);
                    tracing::info!(lease = %name, fence = f, "lease acquired: this instance is active");
                    let _ = active.try_send(());
                    None
                }
                Output::StepDown {
                    reason: StepDownReason::Stopped,
                    ..
                } => {
                    fence.set(0);
                    tracing::info!(lease = %name, "stopping: giving the lease up");
                    None
                }
                Output::StepDown { fence: f, reason } => {
                    fence.set(0);
                    tracing::error!(
                        lease = %name,
                        fence = f,
                        ?reason,
                        "lease lost: another instance may be active; exiting"
                    );
                    std::process::exit(EXIT_LEASE_LOST);
                }
                Output::Release { fence: f } => {
                    if let Err(e) = db.release(f) {
                        tracing::warn!(error = %e, "lease: release failed (it expires by itself)");
                    }
                    None
                }
            };
            if let Some((id, r)) = answer {
                let input = match r {
                    Ok(LeaseAnswer::Held(f)) => Input::Held { id, fence: f },
                    Ok(LeaseAnswer::NotHeld) => Input::NotHeld { id },
                    Err(e) => {
                        tracing::warn!(error = %e, "lease: request failed");
                        Input::Failed { id }
                    }
                };
                lease.handle_input(input, Instant::now());
            }
        }
        if let Some(done) = stopped.take() {
            let _ = done.send(());
            return;
        }
        let wake = lease
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
        match stops.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(done) => {
                stopped = Some(done);
                lease.handle_input(Input::Stop, Instant::now());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lease.handle_input(Input::Timeout, Instant::now())
            }
            // The handle is gone without a release: keep the lease until the process ends.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                lease.handle_input(Input::Timeout, Instant::now());
            }
        }
    }
}
