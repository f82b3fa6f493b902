//! PUA mode for one XMPP presentity X (the seed's `pua_xmpp`, §4.7, §7): the SIP presence
//! server owns the SIP watchers; the gateway feeds it.
//!
//! * X's presence is aggregated over its resources and PUBLISHed (one publication, see
//!   [`crate::publisher`]): one PUBLISH per real change, however many copies Prosody fans out.
//! * A `presence.winfo` subscription to X' tells who watches X; each watcher new to the
//!   gateway becomes `<presence type='subscribe'>` from its JID to X (Kamailio's module did
//!   the same from `pua_xmpp_req_winfo`).

use crate::address::AddressMapper;
use crate::ids::IdGen;
use crate::pidf;
use crate::presence::XmppAggregate;
use crate::publisher::{self, Publication, PublicationRecord, PublisherConfig};
use crate::sip::{
    Destination, Method, NameAddr, OutRequest, OutResponse, SipRequest, SipResponse, SubState,
};
use crate::stanza::{BareJid, InPresence, Jid, OutPresence, PresenceType};
use crate::timers::{self, Backoff};
use crate::winfo::{self, WatcherStatus, WinfoOutcome, WinfoTracker};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Settings shared by every PUA-mode presentity.
#[derive(Clone, Debug)]
pub struct PuaConfig {
    pub publisher: PublisherConfig,
    /// `Expires` of the winfo subscription.
    pub winfo_expires: u32,
    pub contact_host: String,
    pub call_id_host: String,
    pub max_body: usize,
    /// X's statuses are cut to this many characters in the PIDF (`limits.max_status_chars`).
    pub max_status_chars: usize,
}

#[derive(Debug)]
pub enum Input<'a> {
    /// A presence stanza from X.
    Stanza(&'a InPresence),
    /// `pua_xmpp_req_winfo(uri, expires)`: a SIP watcher subscribed to X (0 = unsubscribe).
    /// With the watcher's URI, X is asked at once (the winfo NOTIFY may come later).
    ReqWinfo {
        expires: u32,
        watcher: Option<&'a str>,
    },
    /// A NOTIFY in the winfo dialog.
    Notify(&'a SipRequest),
    /// The final response to a PUBLISH or winfo SUBSCRIBE of ours.
    Response(&'a SipResponse),
    RequestFailed {
        call_id: &'a str,
        cseq: u32,
    },
    Timeout,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Request(OutRequest),
    Response(OutResponse),
    Stanza(OutPresence),
    /// The publication changed (a 2xx to a PUBLISH): store it, to resume it after a restart.
    Persist(PublicationRecord),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct WinfoDialog {
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    remote_target: Option<String>,
    route_set: Vec<String>,
}

/// The PUA-mode state of one XMPP presentity.
#[derive(Debug)]
pub struct PuaPresentity {
    cfg: PuaConfig,
    jid: BareJid,
    /// X' (`sip:alice*xmpp.test@sip-xmpp.test`).
    uri: String,
    mapper: AddressMapper,
    agg: XmppAggregate,
    publication: Publication,
    winfo: Option<WinfoDialog>,
    /// The winfo subscription is wanted (a watcher asked, or restored after a restart).
    winfo_wanted: bool,
    tracker: WinfoTracker,
    refresh_at: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    rng: IdGen,
    out: VecDeque<Output>,
}

impl PuaPresentity {
    pub fn new(
        cfg: PuaConfig,
        jid: BareJid,
        uri: String,
        mapper: AddressMapper,
        seed: u64,
    ) -> PuaPresentity {
        let publication = Publication::new(
            cfg.publisher.clone(),
            uri.clone(),
            crate::ids::sub_stream(seed, 1),
        );
        PuaPresentity {
            agg: XmppAggregate::with_max_status_chars(cfg.max_status_chars),
            cfg,
            jid,
            uri,
            mapper,
            publication,
            winfo: None,
            winfo_wanted: false,
            tracker: WinfoTracker::new(),
            refresh_at: None,
            retry_at: None,
            backoff: Backoff::default(),
            rng: IdGen::new(seed),
            out: VecDeque::new(),
        }
    }

    pub fn jid(&self) -> &BareJid {
        &self.jid
    }
    /// Call-ID of the winfo dialog, for routing its NOTIFYs.
    pub fn winfo_call_id(&self) -> Option<&str> {
        self.winfo.as_ref().map(|d| d.call_id.as_str())
    }
    pub fn winfo_wanted(&self) -> bool {
        self.winfo_wanted
    }
    pub fn publication(&self) -> &Publication {
        &self.publication
    }

    /// Resumes X's stored publication after a restart (issue 6): refreshed at once, or
    /// published anew with the stored body ([`Publication::restore`]); `rec.lease_left` is
    /// what is left now. Ignored if this presentity has published since it was created.
    pub fn restore_publication(&mut self, rec: PublicationRecord, now: Instant) {
        if !self.publication.is_unused() {
            return;
        }
        // A stream of its own: the replaced publication's generator must not be replayed.
        let seed = crate::ids::fresh_stream();
        self.publication = Publication::restore(self.cfg.publisher.clone(), rec, seed, now);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        while let Some(o) = self.publication.poll_output() {
            self.out.push_back(match o {
                publisher::Output::Request(r) => Output::Request(r),
                publisher::Output::Persist(rec) => Output::Persist(rec),
            });
        }
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.refresh_at,
            self.retry_at,
            self.publication.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Stanza(p) => self.on_stanza(p, now),
            Input::ReqWinfo { expires, watcher } => {
                if let (Some(w), true) = (watcher, expires > 0) {
                    self.ask(w);
                }
                if expires == 0 {
                    // The seed unsubscribes the winfo when asked with Expires 0.
                    self.winfo_wanted = false;
                    if self.winfo.as_ref().is_some_and(|d| d.remote_tag.is_some()) {
                        self.send_winfo(0);
                    }
                    self.winfo = None;
                    self.refresh_at = None;
                    self.retry_at = None;
                } else if !self.winfo_wanted || (self.winfo.is_none() && self.retry_at.is_none()) {
                    self.winfo_wanted = true;
                    self.start_winfo(now);
                }
            }
            Input::Notify(req) => self.on_notify(req, now),
            Input::Response(r) => {
                if r.cseq_method == Method::Publish {
                    self.publication
                        .handle_input(publisher::Input::Response(r), now);
                } else {
                    self.on_winfo_response(r, now);
                }
            }
            Input::RequestFailed { call_id, cseq } => {
                if self
                    .winfo
                    .as_ref()
                    .is_some_and(|d| d.call_id == call_id && d.local_cseq == cseq)
                {
                    self.winfo_failed(None, now);
                } else {
                    self.publication
                        .handle_input(publisher::Input::RequestFailed { call_id, cseq }, now);
                }
            }
            Input::Timeout => {
                if self.retry_at.is_some_and(|t| t <= now) {
                    self.retry_at = None;
                    self.start_winfo(now);
                } else if self.refresh_at.is_some_and(|t| t <= now) {
                    self.refresh_at = None;
                    let e = self.cfg.winfo_expires;
                    self.send_winfo(e);
                }
                self.publication
                    .handle_input(publisher::Input::Timeout, now);
            }
        }
    }

    fn on_stanza(&mut self, p: &InPresence, now: Instant) {
        let Ok(kind) = p.kind else {
            return;
        };
        match kind {
            PresenceType::Available | PresenceType::Unavailable => {
                let resource = p.from.resource().map(|r| r.as_str().to_owned());
                if self
                    .agg
                    .apply(resource.as_deref(), kind, &p.body, p.lang.as_deref())
                {
                    let mut body = String::with_capacity(512);
                    let entity = format!("pres:{}", self.uri.trim_start_matches("sip:"));
                    pidf::write_from_xmpp(&entity, &self.uri, &self.agg, &mut body);
                    let available = self.agg.is_available();
                    self.publication.handle_input(
                        publisher::Input::Update {
                            pidf: body,
                            available,
                        },
                        now,
                    );
                }
            }
            PresenceType::Subscribed | PresenceType::Unsubscribed => {
                // The presence server decides authorization (XCAP or policy, §7 step 3): there
                // is no standard hook to push X's decision into it; log it for operators.
                tracing::info!(presentity = %self.jid, watcher = %p.to, ?kind, "authorization decision in PUA mode is up to the presence server");
            }
            _ => {}
        }
    }

    /// Asks X about a watcher reported by the proxy, once per watcher (§7 step 6).
    fn ask(&mut self, watcher_uri: &str) {
        if self.tracker.mark_seen(watcher_uri) {
            self.subscribe_stanza(watcher_uri);
        }
    }

    fn subscribe_stanza(&mut self, watcher_uri: &str) {
        match self.mapper.sip_to_jid(watcher_uri) {
            Ok(watcher) => self.out.push_back(Output::Stanza(OutPresence::new(
                Jid::from(watcher),
                Jid::from(self.jid.clone()),
                PresenceType::Subscribe,
            ))),
            Err(e) => {
                tracing::warn!(watcher = %watcher_uri, error = %e, "watcher cannot be mapped to a JID")
            }
        }
    }

    fn contact(&self) -> String {
        let user = self
            .uri
            .split_once(':')
            .and_then(|(_, r)| r.split_once('@'))
            .map(|(u, _)| u)
            .unwrap_or("gw");
        format!("sip:{user}@{}", self.cfg.contact_host)
    }

    fn start_winfo(&mut self, now: Instant) {
        self.winfo = Some(WinfoDialog {
            call_id: self.rng.call_id(&self.cfg.call_id_host),
            local_tag: self.rng.tag("wi-"),
            remote_tag: None,
            local_cseq: 0,
            remote_cseq: None,
            remote_target: None,
            route_set: Vec::new(),
        });
        self.tracker.restart();
        self.refresh_at = None;
        self.retry_at = None;
        let e = self.cfg.winfo_expires;
        self.send_winfo(e);
        let _ = now;
    }

    fn send_winfo(&mut self, expires: u32) {
        let contact = self.contact();
        let Some(d) = self.winfo.as_mut() else {
            return;
        };
        d.local_cseq += 1;
        let established = d.remote_tag.is_some();
        let req = OutRequest {
            method: Method::Subscribe,
            uri: match (&d.remote_target, established) {
                (Some(t), true) => t.clone(),
                _ => self.uri.clone(),
            },
            route: if established {
                d.route_set.clone()
            } else {
                Vec::new()
            },
            from: NameAddr {
                display: None,
                uri: self.uri.clone(),
                tag: Some(d.local_tag.clone()),
            },
            to: NameAddr {
                display: None,
                uri: self.uri.clone(),
                tag: d.remote_tag.clone(),
            },
            call_id: d.call_id.clone(),
            cseq: d.local_cseq,
            contact: Some(contact),
            headers: vec![
                ("Event", "presence.winfo".to_owned()),
                ("Accept", "application/watcherinfo+xml".to_owned()),
                ("Expires", expires.to_string()),
            ],
            content_type: None,
            body: Vec::new(),
            destination: if established {
                Destination::InDialog
            } else {
                Destination::OutboundProxy
            },
        };
        self.out.push_back(Output::Request(req));
    }

    fn on_winfo_response(&mut self, r: &SipResponse, now: Instant) {
        let Some(d) = self.winfo.as_mut() else {
            return;
        };
        if r.call_id != d.call_id || r.cseq != d.local_cseq {
            return;
        }
        match r.status {
            200..=299 => {
                if d.remote_tag.is_none() {
                    d.remote_tag = r.to.tag.clone();
                }
                self.backoff.reset();
                let granted = r
                    .expires
                    .unwrap_or(self.cfg.winfo_expires)
                    .min(self.cfg.winfo_expires);
                if granted > 0 && self.winfo_wanted {
                    self.refresh_at = Some(now + timers::refresh_after(granted, &mut self.rng));
                }
            }
            481 => self.start_winfo(now),
            code => {
                tracing::warn!(presentity = %self.uri, code, "winfo SUBSCRIBE failed");
                self.winfo_failed(r.retry_after, now);
            }
        }
    }

    fn winfo_failed(&mut self, retry_after: Option<u32>, now: Instant) {
        self.winfo = None;
        self.refresh_at = None;
        if self.winfo_wanted {
            let wait = self.backoff.fail(retry_after, &mut self.rng);
            self.retry_at = Some(now + wait);
        }
    }

    fn respond(&mut self, req: &SipRequest, code: u16) {
        self.out
            .push_back(Output::Response(OutResponse::to_request(req, code, None)));
    }

    fn on_notify(&mut self, req: &SipRequest, now: Instant) {
        match &req.event {
            Some(e) if e.package == "presence.winfo" => {}
            Some(_) => return self.respond(req, 489),
            None => return self.respond(req, 400),
        }
        let state = match &req.subscription_state {
            Some(Ok(s)) => s.clone(),
            _ => return self.respond(req, 400),
        };
        let Some(d) = self.winfo.as_mut() else {
            return self.respond(req, 481);
        };
        if req.call_id != d.call_id || req.to.tag.as_deref() != Some(d.local_tag.as_str()) {
            return self.respond(req, 481);
        }
        if d.remote_cseq.is_some_and(|c| req.cseq <= c) {
            return self.respond(req, 500);
        }
        if req.body.len() > self.cfg.max_body {
            return self.respond(req, 413);
        }
        if d.remote_cseq.is_none() {
            d.route_set = req.record_route.clone();
        }
        d.remote_cseq = Some(req.cseq);
        if d.remote_tag.is_none() {
            d.remote_tag = req.from.tag.clone();
        }
        if let Some(c) = &req.contact {
            d.remote_target = Some(c.uri.clone());
        }
        self.respond(req, 200);
        if state.state == SubState::Terminated {
            // §7 step 5: a terminated winfo is never translated; subscribe again if still wanted.
            self.winfo = None;
            self.refresh_at = None;
            if self.winfo_wanted {
                let wait = match state.reason.as_deref() {
                    Some("rejected") | Some("noresource") | Some("invariant") => {
                        self.winfo_wanted = false;
                        return;
                    }
                    Some("timeout") | Some("deactivated") => Duration::ZERO,
                    _ => state
                        .retry_after
                        .map(|s| Duration::from_secs(u64::from(s)))
                        .unwrap_or_else(|| self.backoff.fail(None, &mut self.rng)),
                };
                self.retry_at = Some(now + wait);
            }
            return;
        }
        if req.body.is_empty() {
            return;
        }
        let doc = match winfo::parse(&req.body, self.cfg.max_body) {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(presentity = %self.uri, error = %e, "winfo body rejected");
                return;
            }
        };
        match self.tracker.apply(&doc) {
            WinfoOutcome::NeedFullState => {
                // Case 91: lost an update; refresh to get full state.
                let e = self.cfg.winfo_expires;
                self.send_winfo(e);
            }
            WinfoOutcome::NewWatchers(ws) => {
                for w in ws {
                    if matches!(
                        w.status,
                        WatcherStatus::Pending | WatcherStatus::Waiting | WatcherStatus::Active
                    ) {
                        self.subscribe_stanza(&w.uri);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "pua_tests.rs"]
mod tests;
