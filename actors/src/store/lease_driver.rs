//! Runs the lease machine ([`pua_xmpp::lease`]) against the `gateway_lease` row (issue 17):
//! a standby instance blocks in [`wait_until_active`] before it binds or connects anything
//! (Prosody takes one connection per component, and the SIP address is the active one's);
//! once active, a thread of its own keeps renewing, and the process exits (code 3) the moment
//! the lease is lost, so a supervisor starts it again as a standby with fresh state.

use super::postgres::{Fence, LeaseAnswer, PgLease};
use super::StoreError;
use pua_xmpp::lease::{Input, Lease, LeaseConfig, Output};
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

/// Blocks until this instance holds the lease `name`, and returns the fence the store must
/// carry. The lease thread goes on renewing; losing the lease exits the process.
pub fn wait_until_active(
    url: &str,
    name: &str,
    holder: &str,
    cfg: LeaseConfig,
) -> Result<Fence, StoreError> {
    cfg.check().map_err(StoreError::Backend)?;
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
        .spawn(move || drive(&url, &name, &holder, cfg, &f, tx))
        .map_err(|e| StoreError::Backend(format!("cannot start the lease thread: {e}")))?;

    rx.recv()
        .map_err(|_| StoreError::Backend("the lease thread stopped".to_owned()))?;
    Ok(fence)
}

fn drive(
    url: &str,
    name: &str,
    holder: &str,
    cfg: LeaseConfig,
    fence: &Fence,
    active: mpsc::SyncSender<()>,
) {
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
        let wake = lease
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        lease.handle_input(Input::Timeout, Instant::now());
    }
}
