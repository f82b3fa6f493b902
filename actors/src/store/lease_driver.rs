//! Runs the lease machine ([`pua_xmpp::lease`]) against the `gateway_lease` row (issue 17):
//! a standby instance blocks in [`wait_until_active`] before it binds or connects anything
//! (Prosody takes one connection per component, and the SIP address is the active one's);
//! once active, a thread of its own keeps renewing, and the process exits (code 3) the moment
//! the lease is lost, so a supervisor starts it again as a standby with fresh state. A graceful
//! stop releases the lease after the store's last flush ([`LeaseHandle::release`]).
//!
//! The database requests run on a worker thread of their own, so the lease's clock never
//! waits for the network: a renewal that neither answers nor fails (the database's host
//! blackholed) still ends the lease at its end, and a standby's request stuck that long is
//! given up and retried on a fresh connection. What the thread last heard from the database
//! is kept in a [`LeaseStatus`], which a standby's `/health` reports.

use super::postgres::{Fence, LeaseAnswer, PgLease};
use super::StoreError;
use pua_xmpp::lease::{Input, Lease, LeaseConfig, Output, StepDownReason};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
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

/// What the lease thread last heard from the database: whether a standby could take over
/// now (its `/health`, issue 17). Cheap to clone; shared between threads.
#[derive(Clone, Debug)]
pub struct LeaseStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug)]
struct StatusInner {
    started: Instant,
    /// Milliseconds after `started` of the last answer (held or not), plus 1; 0: none yet.
    last_answer: AtomicU64,
    /// The last request failed (unreachable, refused, timed out).
    failing: AtomicBool,
    last_error: Mutex<String>,
    /// An answer older than this counts as no contact.
    stale_after: Duration,
}

impl LeaseStatus {
    /// Nothing heard yet; answers older than `stale_after` count as none.
    pub fn new(stale_after: Duration) -> LeaseStatus {
        LeaseStatus {
            inner: Arc::new(StatusInner {
                started: Instant::now(),
                last_answer: AtomicU64::new(0),
                failing: AtomicBool::new(false),
                last_error: Mutex::new(String::new()),
                stale_after,
            }),
        }
    }

    /// The database answered a lease request (either way).
    pub fn answered(&self) {
        let ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner
            .last_answer
            .store(ms.saturating_add(1), Ordering::Release);
        self.inner.failing.store(false, Ordering::Release);
    }

    /// A lease request failed with `error`.
    pub fn failed(&self, error: &str) {
        if let Ok(mut e) = self.inner.last_error.lock() {
            error.clone_into(&mut e);
        }
        self.inner.failing.store(true, Ordering::Release);
    }

    /// Why this instance could not take over now (the database not reached), or `None`.
    pub fn unreachable(&self) -> Option<String> {
        let last = self.inner.last_answer.load(Ordering::Acquire);
        let error = || {
            self.inner
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default()
        };
        if self.inner.failing.load(Ordering::Acquire) {
            return Some(format!("database unreachable: {}", error()));
        }
        if last == 0 {
            return Some("database not reached yet".to_owned());
        }
        let age = self
            .inner
            .started
            .elapsed()
            .saturating_sub(Duration::from_millis(last - 1));
        (age > self.inner.stale_after)
            .then(|| format!("database unreachable: no answer for {} ms", age.as_millis()))
    }
}

/// The running lease of the active instance.
pub struct LeaseHandle {
    events: mpsc::Sender<Event>,
}

impl LeaseHandle {
    /// Gives the lease up (after the graceful shutdown flushed the store), so the standby
    /// takes over at once instead of at the lease's expiry. Waits at most `timeout`.
    pub fn release(self, timeout: Duration) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.events.send(Event::Stop(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// What wakes the lease thread.
enum Event {
    /// The worker's answer to request `id`.
    Answer(u64, Result<LeaseAnswer, StoreError>),
    /// Graceful stop: release, then say so on the sender.
    Stop(mpsc::SyncSender<()>),
}

/// A request to the worker thread.
enum Req {
    Acquire {
        id: u64,
        ttl: Duration,
    },
    Renew {
        id: u64,
        fence: i64,
        ttl: Duration,
    },
    Release {
        fence: i64,
        done: mpsc::SyncSender<()>,
    },
}

/// Workers given up on (stuck in a request) that have not returned yet: beyond this many,
/// no new one is started and requests fail at once until one returns.
const MAX_STUCK_WORKERS: usize = 4;

/// The thread that talks to the database, one request at a time.
struct Worker {
    reqs: mpsc::Sender<Req>,
}

impl Worker {
    fn start(
        url: &str,
        name: &str,
        holder: &str,
        events: mpsc::Sender<Event>,
        alive: Arc<AtomicUsize>,
    ) -> Option<Worker> {
        let (reqs, rx) = mpsc::channel::<Req>();
        let (url, name, holder) = (url.to_owned(), name.to_owned(), holder.to_owned());
        alive.fetch_add(1, Ordering::AcqRel);
        let guard = alive.clone();
        let r = std::thread::Builder::new()
            .name("lease-db".to_owned())
            .spawn(move || {
                let mut db: Option<PgLease> = None;
                while let Ok(req) = rx.recv() {
                    if db.is_none() {
                        match PgLease::open(&url, &name, &holder) {
                            Ok(d) => db = Some(d),
                            Err(e) => {
                                let id = match req {
                                    Req::Acquire { id, .. } | Req::Renew { id, .. } => id,
                                    Req::Release { done, .. } => {
                                        let _ = done.send(());
                                        continue;
                                    }
                                };
                                if events.send(Event::Answer(id, Err(e))).is_err() {
                                    break;
                                }
                                continue;
                            }
                        }
                    }
                    let Some(d) = db.as_mut() else { continue };
                    let (id, r) = match req {
                        Req::Acquire { id, ttl } => (id, d.acquire(ttl)),
                        Req::Renew { id, fence, ttl } => (id, d.renew(fence, ttl)),
                        Req::Release { fence, done } => {
                            if let Err(e) = d.release(fence) {
                                tracing::warn!(error = %e, "lease: release failed (it expires by itself)");
                            }
                            let _ = done.send(());
                            continue;
                        }
                    };
                    if events.send(Event::Answer(id, r)).is_err() {
                        break;
                    }
                }
                guard.fetch_sub(1, Ordering::AcqRel);
            });
        match r {
            Ok(_) => Some(Worker { reqs }),
            Err(e) => {
                alive.fetch_sub(1, Ordering::AcqRel);
                tracing::error!(error = %e, "lease: cannot start the database thread");
                None
            }
        }
    }
}

/// Blocks until this instance holds the lease `name`, and returns the fence the store must
/// carry. The lease thread goes on renewing; losing the lease exits the process. `status`
/// follows the database's answers from the first request on.
pub fn wait_until_active(
    url: &str,
    name: &str,
    holder: &str,
    cfg: LeaseConfig,
    status: LeaseStatus,
) -> Result<(Fence, LeaseHandle), StoreError> {
    cfg.check().map_err(StoreError::Backend)?;
    let (events, rx) = mpsc::channel();
    let fence = Fence::new(name);
    tracing::info!(
        lease = %name,
        holder = %holder,
        ttl_ms = cfg.ttl.as_millis() as u64,
        renew_ms = cfg.renew_every.as_millis() as u64,
        retry_ms = cfg.retry_every.as_millis() as u64,
        "standby: waiting for the lease"
    );
    let (tx, active) = mpsc::sync_channel(1);
    let driver = Driver {
        url: url.to_owned(),
        name: name.to_owned(),
        holder: holder.to_owned(),
        cfg,
        fence: fence.clone(),
        status,
        events: events.clone(),
        worker: None,
        alive: Arc::new(AtomicUsize::new(0)),
    };
    std::thread::Builder::new()
        .name("lease".to_owned())
        .spawn(move || driver.run(tx, rx))
        .map_err(|e| StoreError::Backend(format!("cannot start the lease thread: {e}")))?;

    active
        .recv()
        .map_err(|_| StoreError::Backend("the lease thread stopped".to_owned()))?;
    Ok((fence, LeaseHandle { events }))
}

/// The lease thread: the machine, its clock, and the worker it sends requests to.
struct Driver {
    url: String,
    name: String,
    holder: String,
    cfg: LeaseConfig,
    fence: Fence,
    status: LeaseStatus,
    events: mpsc::Sender<Event>,
    worker: Option<Worker>,
    alive: Arc<AtomicUsize>,
}

impl Driver {
    /// How long a request may stay unanswered before it counts as failed and its worker is
    /// given up: the part of a lease an active instance counts on (an active one steps down
    /// before that anyway), at least a second for a connect.
    fn request_deadline(&self) -> Duration {
        self.cfg.usable().max(Duration::from_secs(1))
    }

    fn run(mut self, active: mpsc::SyncSender<()>, events: mpsc::Receiver<Event>) {
        let mut lease = Lease::new(self.cfg, Instant::now());
        lease.handle_input(Input::Timeout, Instant::now());
        // The request out now: (id, when it counts as failed).
        let mut out: Option<(u64, Instant)> = None;
        loop {
            while let Some(o) = lease.poll_output() {
                match o {
                    Output::Acquire { id, ttl } => {
                        out = Some((id, Instant::now() + self.request_deadline()));
                        self.send(Req::Acquire { id, ttl }, id);
                    }
                    Output::Renew { id, fence, ttl } => {
                        out = Some((id, Instant::now() + self.request_deadline()));
                        self.send(Req::Renew { id, fence, ttl }, id);
                    }
                    Output::Activate { fence: f } => {
                        self.fence.set(f);
                        tracing::info!(lease = %self.name, fence = f, "lease acquired: this instance is active");
                        let _ = active.try_send(());
                    }
                    Output::StepDown {
                        reason: StepDownReason::Stopped,
                        ..
                    } => {
                        self.fence.set(0);
                        tracing::info!(lease = %self.name, "stopping: giving the lease up");
                    }
                    Output::StepDown { fence: f, reason } => {
                        self.fence.set(0);
                        tracing::error!(
                            lease = %self.name,
                            fence = f,
                            ?reason,
                            "lease lost: another instance may be active; exiting"
                        );
                        std::process::exit(EXIT_LEASE_LOST);
                    }
                    Output::Release { .. } => {}
                }
            }
            let now = Instant::now();
            let wake = match (lease.poll_timeout(), out) {
                (Some(a), Some((_, b))) => a.min(b),
                (a, b) => a
                    .or(b.map(|(_, t)| t))
                    .unwrap_or(now + Duration::from_millis(100)),
            };
            match events.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Event::Answer(id, r)) => {
                    let current = out.is_some_and(|(o, _)| o == id);
                    if current {
                        out = None;
                    } else if r.is_err() {
                        // A late failure of a request given up on says nothing new.
                        continue;
                    }
                    let input = match r {
                        Ok(LeaseAnswer::Held(f)) => {
                            self.status.answered();
                            Input::Held { id, fence: f }
                        }
                        Ok(LeaseAnswer::NotHeld) => {
                            self.status.answered();
                            Input::NotHeld { id }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lease: request failed");
                            self.status.failed(&e.to_string());
                            Input::Failed { id }
                        }
                    };
                    lease.handle_input(input, Instant::now());
                }
                Ok(Event::Stop(done)) => {
                    lease.handle_input(Input::Stop, Instant::now());
                    let mut release = None;
                    while let Some(o) = lease.poll_output() {
                        if let Output::Release { fence } = o {
                            release = Some(fence);
                        } else if let Output::StepDown { .. } = o {
                            self.fence.set(0);
                            tracing::info!(lease = %self.name, "stopping: giving the lease up");
                        }
                    }
                    match (release, &self.worker) {
                        (Some(fence), Some(w)) => {
                            if let Err(mpsc::SendError(Req::Release { done, .. })) =
                                w.reqs.send(Req::Release { fence, done })
                            {
                                let _ = done.send(());
                            }
                        }
                        _ => {
                            let _ = done.send(());
                        }
                    }
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if let Some((id, _)) = out.filter(|(_, t)| *t <= now) {
                        // Stuck (blackholed): give the worker up, the next request gets a
                        // fresh connection.
                        out = None;
                        self.worker = None;
                        let e = format!(
                            "no answer within {} ms",
                            self.request_deadline().as_millis()
                        );
                        tracing::warn!(error = %e, "lease: request failed");
                        self.status.failed(&e);
                        lease.handle_input(Input::Failed { id }, now);
                    } else {
                        lease.handle_input(Input::Timeout, now);
                    }
                }
                // Cannot happen: this thread holds a sender itself.
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Hands `req` to the worker (starting one if there is none); a request that cannot be
    /// sent fails at once.
    fn send(&mut self, req: Req, id: u64) {
        if self.worker.is_none() {
            if self.alive.load(Ordering::Acquire) > MAX_STUCK_WORKERS {
                let e = "too many database requests stuck";
                self.status.failed(e);
                tracing::warn!(error = e, "lease: request failed");
                let _ = self
                    .events
                    .send(Event::Answer(id, Err(StoreError::Backend(e.to_owned()))));
                return;
            }
            self.worker = Worker::start(
                &self.url,
                &self.name,
                &self.holder,
                self.events.clone(),
                self.alive.clone(),
            );
        }
        let sent = self
            .worker
            .as_ref()
            .is_some_and(|w| w.reqs.send(req).is_ok());
        if !sent {
            self.worker = None;
            let _ = self.events.send(Event::Answer(
                id,
                Err(StoreError::Backend(
                    "the lease database thread ended".to_owned(),
                )),
            ));
        }
    }
}
