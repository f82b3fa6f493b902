//! The PUBLISH client of PUA mode (RFC 3903, §4.7): one publication per XMPP presentity X.
//!
//! Prosody sends X's presence once per contact, so one change arrives many times; the
//! publication keeps the current body and sends ONE PUBLISH per real change (Kamailio's
//! pua_xmpp sends one per copy and collides on 412). PUBLISHes are serialized: never two
//! outstanding for one entity-tag; changes meanwhile are coalesced to the latest.

use crate::ids::IdGen;
use crate::sip::{Destination, Method, NameAddr, OutRequest, SipResponse};
use crate::timers::{self, Backoff};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Settings shared by every publication.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    pub expires: u32,
    pub call_id_host: String,
    /// After the closed document is published, remove the publication this much later if X
    /// stays unavailable (§4.7 ◆ 60 s).
    pub remove_after: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            expires: 3600,
            call_id_host: "pua-xmpp".to_owned(),
            remove_after: Duration::from_secs(60),
        }
    }
}

/// The kind of PUBLISH (RFC 3903 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishKind {
    Initial,
    Refresh,
    Modify,
    Remove,
}

/// What is persisted of a publication: enough to refresh it after a restart (issue 6) without
/// waiting for X to send presence again ([`Publication::restore`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicationRecord {
    pub uri: String,
    pub etag: Option<String>,
    pub call_id: String,
    pub cseq: u32,
    /// The document the server holds under `etag`: X's last presence sent. `None` after a
    /// removal.
    pub body: Option<String>,
    /// Whether X was available (an unavailable document is removed `remove_after` later).
    pub available: bool,
    /// Seconds of the publication left: as granted when written; when restoring, what is
    /// left now (0 or `None`: gone from the server).
    pub lease_left: Option<u32>,
}

#[derive(Debug)]
pub enum Input<'a> {
    /// X's presence changed: the full PIDF for it, and whether any resource is available.
    Update {
        pidf: String,
        available: bool,
    },
    Response(&'a SipResponse),
    RequestFailed {
        call_id: &'a str,
        cseq: u32,
    },
    Timeout,
}

/// Actions for the runtime. Nearly every output is a request and outputs are drained at once,
/// so the size gap to `Persist` costs nothing worth a heap allocation per PUBLISH.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Request(OutRequest),
    Persist(PublicationRecord),
}

#[derive(Debug)]
pub struct Publication {
    cfg: PublisherConfig,
    /// X' (`sip:romeo*example.net@xmpp.example.com`): Request-URI, From and To.
    uri: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
    etag: Option<String>,
    /// The current document.
    body: Option<String>,
    /// The document the server holds (last 2xx).
    published: Option<String>,
    /// The outstanding PUBLISH: CSeq, kind, requested expiry.
    inflight: Option<(u32, PublishKind, u32)>,
    /// The document the outstanding PUBLISH carries: what the server holds after its 2xx,
    /// which may be older than `body` when changes arrived meanwhile.
    inflight_body: Option<String>,
    /// The expiry asked for: the configured one, raised by a 423's `Min-Expires`.
    expires: u32,
    queued: bool,
    refresh_at: Option<Instant>,
    remove_at: Option<Instant>,
    retry_at: Option<Instant>,
    disabled: bool,
    backoff: Backoff,
    rng: IdGen,
    out: VecDeque<Output>,
}

impl Publication {
    pub fn new(cfg: PublisherConfig, uri: String, seed: u64) -> Publication {
        let mut rng = IdGen::new(seed);
        let call_id = rng.call_id(&cfg.call_id_host);
        let from_tag = rng.tag("pub-");
        let expires = cfg.expires;
        Publication {
            cfg,
            uri,
            call_id,
            from_tag,
            cseq: 0,
            etag: None,
            body: None,
            published: None,
            inflight: None,
            inflight_body: None,
            expires,
            queued: false,
            refresh_at: None,
            remove_at: None,
            retry_at: None,
            disabled: false,
            backoff: Backoff::default(),
            rng,
            out: VecDeque::new(),
        }
    }

    /// Resumes a stored publication after a restart (issue 6, RFC 3903 §4.3). While the server
    /// still holds it (an entity-tag and `lease_left` > 0) it is refreshed at once:
    /// `SIP-If-Match` with the stored entity-tag and no body; a 412 publishes the stored body
    /// anew (case 89). An expired one is published anew with its body, unless X was
    /// unavailable (its removal was due anyway). An unavailable document is removed
    /// `remove_after` from `now`. Same Call-ID, CSeq continued.
    pub fn restore(
        cfg: PublisherConfig,
        rec: PublicationRecord,
        seed: u64,
        now: Instant,
    ) -> Publication {
        let mut p = Publication::new(cfg, rec.uri, seed);
        p.call_id = rec.call_id;
        p.cseq = rec.cseq;
        let Some(body) = rec.body else {
            return p;
        };
        let alive = rec.etag.is_some() && rec.lease_left.is_some_and(|l| l > 0);
        if !alive && !rec.available {
            return p;
        }
        if !rec.available {
            p.remove_at = Some(now + p.cfg.remove_after);
        }
        p.body = Some(body);
        if alive {
            p.etag = rec.etag;
            p.published = p.body.clone();
            p.send(PublishKind::Refresh, p.expires);
        } else {
            p.send(PublishKind::Initial, p.expires);
        }
        p
    }

    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }
    /// Nothing was ever sent or asked of this publication (a restore may replace it).
    pub fn is_unused(&self) -> bool {
        self.cseq == 0 && self.body.is_none()
    }
    /// False after the server said 489 (no presence package): PUA mode is off for it.
    pub fn is_enabled(&self) -> bool {
        !self.disabled
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next instant at which [`Input::Timeout`] has work to do. Nothing while a PUBLISH is
    /// outstanding (its response or failure always comes and re-arms the timers), so a runtime
    /// never spins on a due timer that cannot fire yet.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.disabled || self.inflight.is_some() {
            return None;
        }
        // A pending backoff holds back everything else.
        if self.retry_at.is_some() {
            return self.retry_at;
        }
        [self.refresh_at, self.remove_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        if self.disabled {
            return;
        }
        match input {
            Input::Update { pidf, available } => {
                // Removal is due `remove_after` after X went unavailable; the copies of the
                // same unavailable that Prosody sends per contact do not push it back.
                if available {
                    self.remove_at = None;
                } else if self.remove_at.is_none() {
                    self.remove_at = Some(now + self.cfg.remove_after);
                }
                if self.body.as_deref() == Some(pidf.as_str()) {
                    return;
                }
                self.body = Some(pidf);
                self.send_change();
            }
            Input::Response(r) => self.on_response(r, now),
            Input::RequestFailed { call_id, cseq } => {
                if call_id == self.call_id && self.inflight.is_some_and(|(c, _, _)| c == cseq) {
                    self.inflight = None;
                    self.inflight_body = None;
                    self.retry_later(None, now);
                }
            }
            Input::Timeout => self.on_timeout(now),
        }
    }

    /// Sends the current body as initial or modify, or queues it behind the outstanding one.
    fn send_change(&mut self) {
        if self.inflight.is_some() {
            self.queued = true;
            return;
        }
        if self.body == self.published && self.etag.is_some() {
            return;
        }
        let kind = if self.etag.is_some() {
            PublishKind::Modify
        } else {
            PublishKind::Initial
        };
        self.send(kind, self.expires);
    }

    fn send(&mut self, kind: PublishKind, expires: u32) {
        self.cseq += 1;
        self.queued = false;
        self.retry_at = None;
        let mut headers = vec![("Event", "presence".to_owned())];
        if kind != PublishKind::Initial {
            if let Some(e) = &self.etag {
                headers.push(("SIP-If-Match", e.clone()));
            }
        }
        headers.push(("Expires", expires.to_string()));
        let body = match kind {
            PublishKind::Initial | PublishKind::Modify => self.body.clone().unwrap_or_default(),
            PublishKind::Refresh | PublishKind::Remove => String::new(),
        };
        self.inflight_body = match kind {
            PublishKind::Initial | PublishKind::Modify => self.body.clone(),
            PublishKind::Refresh => self.published.clone(),
            PublishKind::Remove => None,
        };
        let req = OutRequest {
            method: Method::Publish,
            uri: self.uri.clone(),
            route: Vec::new(),
            from: NameAddr {
                display: None,
                uri: self.uri.clone(),
                tag: Some(self.from_tag.clone()),
            },
            to: NameAddr {
                display: None,
                uri: self.uri.clone(),
                tag: None,
            },
            call_id: self.call_id.clone(),
            cseq: self.cseq,
            contact: None,
            headers,
            content_type: (!body.is_empty()).then_some("application/pidf+xml"),
            body: body.into_bytes(),
            destination: Destination::OutboundProxy,
        };
        self.inflight = Some((self.cseq, kind, expires));
        self.out.push_back(Output::Request(req));
    }

    fn on_response(&mut self, r: &SipResponse, now: Instant) {
        let Some((cseq, kind, requested)) = self.inflight else {
            return;
        };
        if r.call_id != self.call_id || r.cseq != cseq || r.cseq_method != Method::Publish {
            return;
        }
        self.inflight = None;
        if !(200..300).contains(&r.status) {
            self.inflight_body = None;
        }
        match r.status {
            200..=299 => {
                self.backoff.reset();
                if kind == PublishKind::Remove {
                    self.etag = None;
                    self.published = None;
                    self.refresh_at = None;
                    self.remove_at = None;
                } else {
                    // Every 2xx may rotate the entity-tag: always overwrite (§4.7).
                    if let Some(e) = &r.sip_etag {
                        self.etag = Some(e.clone());
                    }
                    // What the server now holds is what this PUBLISH carried, not a change
                    // queued meanwhile (that one is sent next).
                    self.published = self.inflight_body.take();
                    let granted = r.expires.map_or(requested, |e| e.min(requested));
                    self.refresh_at = Some(now + timers::refresh_after(granted, &mut self.rng));
                }
                self.out.push_back(Output::Persist(PublicationRecord {
                    uri: self.uri.clone(),
                    etag: self.etag.clone(),
                    call_id: self.call_id.clone(),
                    cseq: self.cseq,
                    body: self.published.clone(),
                    available: self.remove_at.is_none(),
                    lease_left: self
                        .published
                        .is_some()
                        .then(|| r.expires.map_or(requested, |e| e.min(requested))),
                }));
                if self.queued {
                    self.send_change();
                }
            }
            412 => {
                // Case 89: the server forgot the etag; start again with the full body.
                self.etag = None;
                self.published = None;
                if kind == PublishKind::Remove {
                    return;
                }
                self.send(PublishKind::Initial, self.expires);
            }
            423 => match r.min_expires.filter(|&m| m > requested) {
                // Retry with the server's minimum, and keep asking for it from now on.
                Some(min) => {
                    self.expires = self.expires.max(min);
                    self.send(kind, min);
                }
                // A 423 without a usable Min-Expires would loop: treat it as a failure.
                None => {
                    tracing::warn!(uri = %self.uri, "PUBLISH 423 without a Min-Expires above {requested}");
                    self.retry_later(None, now);
                }
            },
            489 => {
                tracing::error!(uri = %self.uri, "presence server does not support PUBLISH Event: presence (489); PUA mode disabled for this presentity");
                self.disabled = true;
            }
            code => {
                tracing::warn!(uri = %self.uri, code, "PUBLISH failed; retrying with backoff");
                self.retry_later(r.retry_after, now);
            }
        }
    }

    fn retry_later(&mut self, retry_after: Option<u32>, now: Instant) {
        let wait = self.backoff.fail(retry_after, &mut self.rng);
        self.retry_at = Some(now + wait);
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.inflight.is_some() {
            return;
        }
        // During a backoff nothing else is sent; when it ends, a due removal is retried as a
        // removal (it stays armed until its 2xx), anything else as the current document.
        let retrying = match self.retry_at {
            Some(t) if t > now => return,
            Some(_) => {
                self.retry_at = None;
                true
            }
            None => false,
        };
        if self.remove_at.is_some_and(|t| t <= now) {
            if self.etag.is_some() {
                self.refresh_at = None;
                self.send(PublishKind::Remove, 0);
            } else {
                self.remove_at = None;
            }
            return;
        }
        if retrying {
            self.published = None;
            self.send_change();
            return;
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            if self.etag.is_some() {
                self.send(PublishKind::Refresh, self.expires);
            } else {
                self.send_change();
            }
        }
    }
}

#[cfg(test)]
#[path = "publisher_tests.rs"]
mod tests;
