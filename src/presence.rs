//! The presence mapping both ways: a parsed PIDF becomes per-resource XMPP presence (§5.3), and
//! the presences of an XMPP user's resources aggregate into what one PIDF says (§4.6).
//!
//! Both sides keep only what they must: [`Announced`] remembers a 64-bit fingerprint of the last
//! stanza per resource (for duplicate suppression), not the stanza itself.

use crate::pidf::{sha1_hex16, Activities, Basic, Note, PidfDoc};
use crate::stanza::{Availability, BareJid, Jid, OutPresence, PresenceType, Show, Status};
use std::hash::{Hash, Hasher};

/// One PIDF tuple as XMPP sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TupleView {
    /// The resource of `S'` this tuple is published under (§5.3 step 3).
    pub resource: String,
    pub state: Availability,
    pub basic: Basic,
}

/// ◆ §5.3 step 4: idle for this long (by `last-input`) means `xa` rather than `away`.
const XA_IDLE_SECS: i64 = 30 * 60;

/// Strength of an activity class: dnd > xa > away > none.
fn activity_show(name: &str) -> Option<Show> {
    Some(match name {
        "busy" | "on-the-phone" | "meeting" | "appointment" | "presentation" | "performance"
        | "worship" => Show::Dnd,
        "vacation" | "holiday" | "permanent-absence" | "sleeping" => Show::Xa,
        "away" | "breakfast" | "dinner" | "meal" | "in-transit" | "travel" | "steering"
        | "shopping" | "playing" | "tv" | "spectator" => Show::Away,
        _ => return None,
    })
}

fn show_rank(s: Show) -> u8 {
    match s {
        Show::Dnd => 3,
        Show::Xa => 2,
        Show::Away => 1,
        Show::Chat => 0,
    }
}

fn strongest(acts: &Activities) -> Option<Show> {
    acts.items
        .iter()
        .filter_map(|a| activity_show(crate::sip::parse::trim(&a.name)))
        .max_by_key(|s| show_rank(*s))
}

/// ◆ Optional fallback for legacy publishers (old pua_xmpp) that send only a note.
fn note_show(text: &str) -> Option<Show> {
    let t = crate::sip::parse::trim(text);
    if t.eq_ignore_ascii_case("away") {
        Some(Show::Away)
    } else if ["busy", "on the phone", "do not disturb", "dnd"]
        .iter()
        .any(|w| t.eq_ignore_ascii_case(w))
    {
        Some(Show::Dnd)
    } else {
        None
    }
}

/// One `<status>` per language, from the first non-empty source, cut to `max` characters.
fn statuses_from(notes: &[Note], max: usize) -> Vec<Status> {
    let mut out: Vec<Status> = Vec::new();
    for n in notes {
        let text = crate::sip::parse::trim(&n.text);
        if text.is_empty() || out.iter().any(|s| s.lang == n.lang) {
            continue;
        }
        out.push(Status {
            lang: n.lang.clone(),
            text: crate::pidf::truncate(text, max).to_owned(),
        });
    }
    out
}

/// §5.3 step 3: tuple id → resource.
fn resource_name(id: &str) -> String {
    let r = id.strip_prefix("ID-").unwrap_or(id);
    if r.is_empty() || r.len() > 1023 || r.chars().any(char::is_control) {
        hashed_resource(id)
    } else {
        r.to_owned()
    }
}

fn hashed_resource(id: &str) -> String {
    let mut s = String::with_capacity(18);
    s.push_str("t-");
    sha1_hex16(id, &mut s);
    s
}

/// §5.3 steps 1–6: what each tuple says, as XMPP availability. Tuples whose id maps to a
/// resource already seen are dropped unless they are the first open one. Statuses are cut at
/// the default [`crate::pidf::MAX_STATUS_CHARS`]; see [`view_pidf_with`].
pub fn view_pidf(doc: &PidfDoc, now_unix: i64) -> Vec<TupleView> {
    view_pidf_with(doc, now_unix, crate::pidf::MAX_STATUS_CHARS)
}

/// [`view_pidf`] with statuses cut to `max_status_chars` characters (`limits.max_status_chars`).
pub fn view_pidf_with(doc: &PidfDoc, now_unix: i64, max_status_chars: usize) -> Vec<TupleView> {
    let person = doc.person.as_ref();
    let person_acts = person
        .and_then(|p| p.activities.as_ref())
        .filter(|a| a.valid_at(now_unix));
    let idle_show = person.and_then(|p| match p.user_input_idle {
        Some(true) => Some(match p.last_input {
            Some(t) if now_unix - t >= XA_IDLE_SECS => Show::Xa,
            _ => Show::Away,
        }),
        _ => None,
    });
    let person_notes: &[Note] = person.map_or(&[], |p| &p.notes);
    let mut out: Vec<TupleView> = Vec::with_capacity(doc.tuples.len());
    for t in &doc.tuples {
        let acts = t
            .activities
            .as_ref()
            .filter(|a| a.valid_at(now_unix))
            .or(person_acts);
        let other: Vec<Note> = acts
            .into_iter()
            .flat_map(|a| a.items.iter())
            .filter_map(|a| a.other_text.as_ref())
            .map(|t| Note {
                lang: None,
                text: t.clone(),
            })
            .take(1)
            .collect();
        let acts_notes: &[Note] = acts.map_or(&[], |a| &a.notes);
        let statuses = [
            &t.notes[..],
            person_notes,
            &doc.notes[..],
            &other[..],
            acts_notes,
        ]
        .into_iter()
        .map(|notes| statuses_from(notes, max_status_chars))
        .find(|s| !s.is_empty())
        .unwrap_or_default();
        let show = acts.and_then(strongest).or(idle_show).or_else(|| {
            if acts.is_none() {
                statuses.first().and_then(|s| note_show(&s.text))
            } else {
                None
            }
        });
        let priority = t.priority_milli.map(|m| ((m.min(1000) + 5) / 10) as i8);
        let view = TupleView {
            resource: resource_name(&t.id),
            state: Availability {
                show,
                statuses,
                priority,
            },
            basic: t.basic,
        };
        match out.iter_mut().find(|v| v.resource == view.resource) {
            Some(prev) if prev.basic != Basic::Open && view.basic == Basic::Open => *prev = view,
            Some(_) => {}
            None => out.push(view),
        }
    }
    out
}

fn fingerprint<T: Hash>(t: &T) -> u64 {
    let mut h = crate::ids::FxHasher::default();
    t.hash(&mut h);
    h.finish()
}

/// What has been announced to one XMPP watcher for one SIP presentity (per resource), for diffs
/// and duplicate suppression.
///
/// It lives as long as the pair (a million of them), so it is one byte string, or nothing when
/// there is nothing to remember: a flag and the fingerprint of the last "nothing is open"
/// answer, then per resource announced as available (in announcement order) the fingerprint of
/// its last presence, the resource's length (u16) and the resource.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    packed: Option<Box<[u8]>>,
}

/// Bytes before the first resource entry.
const ANN_HEAD: usize = 9;

impl Announced {
    /// No resource is currently announced as available.
    pub fn is_empty(&self) -> bool {
        self.packed.as_ref().is_none_or(|p| p.len() <= ANN_HEAD)
    }
    /// Resources announced as available, in announcement order.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.entries().map(|(r, _, _)| r)
    }

    /// (resource, fingerprint, offset of the fingerprint) of each entry.
    fn entries(&self) -> impl Iterator<Item = (&str, u64, usize)> {
        let bytes: &[u8] = self.packed.as_deref().unwrap_or(&[]);
        let mut at = ANN_HEAD.min(bytes.len());
        std::iter::from_fn(move || {
            let fp = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
            let len = u16::from_le_bytes(bytes.get(at + 8..at + 10)?.try_into().ok()?) as usize;
            let r = std::str::from_utf8(bytes.get(at + 10..at + 10 + len)?).ok()?;
            let fp_at = at;
            at += 10 + len;
            Some((r, fp, fp_at))
        })
    }

    fn offline(&self) -> Option<u64> {
        let p = self.packed.as_deref()?;
        if p.first() != Some(&1) {
            return None;
        }
        Some(u64::from_le_bytes(p.get(1..9)?.try_into().ok()?))
    }

    /// Rewrites the byte string with the offline flag and the entries changed by `f` (only
    /// when the resource set or the flag changes; a changed fingerprint is written in place).
    fn edit<T>(&mut self, f: impl FnOnce(&mut Option<u64>, &mut Vec<(String, u64)>) -> T) -> T {
        let mut offline = self.offline();
        let mut entries: Vec<(String, u64)> = self
            .entries()
            .map(|(r, fp, _)| (r.to_owned(), fp))
            .collect();
        let result = f(&mut offline, &mut entries);
        let mut out = Vec::with_capacity(ANN_HEAD + 16);
        out.push(u8::from(offline.is_some()));
        out.extend_from_slice(&offline.unwrap_or(0).to_le_bytes());
        for (r, fp) in &entries {
            // A resourcepart is at most 1023 bytes (RFC 7622); longer ones were hashed before.
            let r = r.get(..r.len().min(usize::from(u16::MAX))).unwrap_or("");
            out.extend_from_slice(&fp.to_le_bytes());
            out.extend_from_slice(&(r.len() as u16).to_le_bytes());
            out.extend_from_slice(r.as_bytes());
        }
        self.packed = (offline.is_some() || out.len() > ANN_HEAD).then(|| out.into_boxed_slice());
        result
    }

    fn set_offline(&mut self, offline: Option<u64>) {
        if self.offline() != offline {
            self.edit(|o, _| *o = offline);
        }
    }

    fn fingerprint_of(&self, resource: &str) -> Option<u64> {
        self.entries()
            .find(|(r, _, _)| *r == resource)
            .map(|(_, fp, _)| fp)
    }

    /// Records `fp` as the last presence announced from `resource`.
    fn set_fingerprint(&mut self, resource: &str, fp: u64) {
        let at = self
            .entries()
            .find(|(r, _, _)| *r == resource)
            .map(|(_, _, at)| at);
        match (at, self.packed.as_deref_mut()) {
            (Some(at), Some(p)) => {
                if let Some(slot) = p.get_mut(at..at + 8) {
                    slot.copy_from_slice(&fp.to_le_bytes());
                }
            }
            _ => self.edit(|_, entries| entries.push((resource.to_owned(), fp))),
        }
    }

    /// Forgets the resources `keep` says no to, returning them in announcement order.
    fn remove_unless(&mut self, mut keep: impl FnMut(&str) -> bool) -> Vec<String> {
        if self.entries().all(|(r, _, _)| keep(r)) {
            return Vec::new();
        }
        self.edit(|_, entries| {
            let (kept, gone) = std::mem::take(entries)
                .into_iter()
                .partition(|(r, _)| keep(r));
            *entries = kept;
            gone.into_iter().map(|(r, _)| r).collect()
        })
    }
}

fn full_jid(bare: &BareJid, resource: &str) -> Option<Jid> {
    match bare.with_resource_str(resource) {
        Ok(f) => Some(Jid::from(f)),
        // A resource that is not a valid resourcepart gets the hashed form (§5.3 step 3).
        Err(_) => bare
            .with_resource_str(&hashed_resource(resource))
            .ok()
            .map(Jid::from),
    }
}

/// §5.3 step 7: the stanzas one NOTIFY produces for one watcher `to`, updating `announced`.
/// `probe` answers a probe: nothing is suppressed.
pub fn stanzas_for_pidf(
    doc_view: &[TupleView],
    announced: &mut Announced,
    from_bare: &BareJid,
    to: &Jid,
    probe: bool,
) -> Vec<OutPresence> {
    let mut out = Vec::new();
    let had_announced = !announced.is_empty();
    let is_open = |r: &str| {
        doc_view
            .iter()
            .any(|v| v.basic == Basic::Open && v.resource == r)
    };
    // Resources gone, closed or unknown: unavailable first.
    for r in announced.remove_unless(is_open) {
        if let Some(from) = full_jid(from_bare, &r) {
            out.push(OutPresence::new(
                from,
                to.clone(),
                PresenceType::Unavailable,
            ));
        }
    }
    let mut any_open = false;
    for v in doc_view.iter().filter(|v| v.basic == Basic::Open) {
        any_open = true;
        let fp = fingerprint(&v.state);
        if !probe && announced.fingerprint_of(&v.resource) == Some(fp) {
            continue;
        }
        let Some(from) = full_jid(from_bare, &v.resource) else {
            continue;
        };
        announced.set_fingerprint(&v.resource, fp);
        out.push(OutPresence {
            body: v.state.clone(),
            ..OutPresence::new(from, to.clone(), PresenceType::Available)
        });
    }
    if any_open {
        announced.set_offline(None);
        return out;
    }
    // Nothing open: the status of the first tuple that has one (closed tuples carry the "gone"
    // text), on a bare-JID unavailable, unless resources were just withdrawn.
    let statuses = doc_view
        .iter()
        .map(|v| &v.state.statuses)
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_default();
    let fp = fingerprint(&statuses);
    if probe || (!had_announced && announced.offline() != Some(fp)) {
        out.push(OutPresence {
            body: Availability {
                show: None,
                statuses,
                priority: None,
            },
            ..OutPresence::new(
                Jid::from(from_bare.clone()),
                to.clone(),
                PresenceType::Unavailable,
            )
        });
    }
    announced.set_offline(Some(fp));
    out
}

/// Cases 24 / 78: `unavailable` from every announced resource; forgets them.
pub fn unavailable_for_announced(
    announced: &mut Announced,
    from_bare: &BareJid,
    to: &Jid,
) -> Vec<OutPresence> {
    let out = announced
        .resources()
        .filter_map(|r| full_jid(from_bare, r))
        .map(|from| OutPresence::new(from, to.clone(), PresenceType::Unavailable))
        .collect();
    *announced = Announced::default();
    out
}

// ---------------------------------------------------------------------------------------------
// XMPP → SIP

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Empty for a presence from the bare JID.
    resource: Box<str>,
    avail: Availability,
    /// Update counter value at the last change: ties in priority go to the most recent.
    seq: u32,
}

impl Entry {
    fn prio(&self) -> i8 {
        self.avail.priority.unwrap_or(0)
    }
}

/// The presence of one XMPP user over all its resources: the input of one PIDF (§4.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmppAggregate {
    /// Available resources, sorted by priority (descending) then name.
    entries: Vec<Entry>,
    seq: u32,
    /// Statuses of the last `unavailable` that left no resource (the closed document's note).
    offline: Vec<Status>,
    /// Statuses are cut to this many characters on the way in (`limits.max_status_chars`).
    max_status_chars: usize,
}

impl Default for XmppAggregate {
    fn default() -> Self {
        Self::with_max_status_chars(crate::pidf::MAX_STATUS_CHARS)
    }
}

/// Statuses as the PIDF will carry them: default language filled in from the stanza, one per
/// language, cut to `max` characters (§4.6).
fn normalize(body: &Availability, lang: Option<&str>, max: usize) -> Availability {
    let mut statuses: Vec<Status> = Vec::with_capacity(body.statuses.len());
    for s in &body.statuses {
        let l = s.lang.as_deref().or(lang).filter(|l| !l.is_empty());
        if statuses.iter().any(|x| x.lang.as_deref() == l) {
            continue;
        }
        statuses.push(Status {
            lang: l.map(str::to_owned),
            text: crate::pidf::truncate(&s.text, max).to_owned(),
        });
    }
    Availability {
        show: body.show,
        statuses,
        priority: body.priority,
    }
}

impl XmppAggregate {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty aggregate whose statuses are cut to `max` characters (`limits.max_status_chars`).
    pub fn with_max_status_chars(max: usize) -> Self {
        XmppAggregate {
            entries: Vec::new(),
            seq: 0,
            offline: Vec::new(),
            max_status_chars: max,
        }
    }

    /// Applies an available/unavailable presence from resource `resource` (None = bare JID).
    /// `lang` is the stanza's `xml:lang`. Returns true if the resulting PIDF would change;
    /// other presence types change nothing.
    pub fn apply(
        &mut self,
        resource: Option<&str>,
        kind: PresenceType,
        body: &Availability,
        lang: Option<&str>,
    ) -> bool {
        let name = resource.unwrap_or("");
        match kind {
            PresenceType::Available => {
                let avail = normalize(body, lang, self.max_status_chars);
                let pos = self.entries.iter().position(|e| &*e.resource == name);
                if let Some(i) = pos {
                    if self.entries[i].avail == avail {
                        return false;
                    }
                    self.entries.remove(i);
                }
                self.seq = self.seq.wrapping_add(1);
                let e = Entry {
                    resource: name.into(),
                    avail,
                    seq: self.seq,
                };
                // Sorted by priority descending, then name ascending.
                let at = self
                    .entries
                    .iter()
                    .position(|x| {
                        x.prio() < e.prio() || (x.prio() == e.prio() && *x.resource > *e.resource)
                    })
                    .unwrap_or(self.entries.len());
                self.entries.insert(at, e);
                self.offline.clear();
                true
            }
            PresenceType::Unavailable => {
                let before = self.entries.len();
                // A logout is announced per full JID (RFC 6121 §4.5.2). An `unavailable` from
                // the bare JID is the server speaking for the account to one contact: Prosody
                // sends one to a contact just approved, before the current presence. It only
                // clears a bare-JID entry, never the live resources (else every watcher would
                // see a false "offline").
                let r = resource.unwrap_or("");
                self.entries.retain(|e| &*e.resource != r);
                let mut changed = self.entries.len() != before;
                if self.entries.is_empty() {
                    let st = normalize(body, lang, self.max_status_chars).statuses;
                    if st != self.offline {
                        self.offline = st;
                        changed = true;
                    }
                }
                changed
            }
            _ => false,
        }
    }

    pub fn is_available(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The resource whose show becomes the person's activity: highest priority, ties broken by
    /// the most recent update.
    pub fn top(&self) -> Option<(&str, &Availability)> {
        self.entries
            .iter()
            .max_by_key(|e| (e.prio(), e.seq))
            .map(|e| (&*e.resource, &e.avail))
    }

    /// Available resources, sorted by priority (descending) then name.
    pub fn resources(&self) -> impl Iterator<Item = (&str, &Availability)> {
        self.entries.iter().map(|e| (&*e.resource, &e.avail))
    }

    /// Statuses of the last `unavailable` once nothing is available.
    pub fn offline_statuses(&self) -> &[Status] {
        &self.offline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pidf::parse;

    const NOW: i64 = 1_795_671_862; // 2026-11-26T05:44:22Z

    fn s_bare() -> BareJid {
        BareJid::new("juliet*example.com@sip.example.net").unwrap()
    }
    fn romeo() -> Jid {
        Jid::new("romeo@example.net").unwrap()
    }

    fn run(body: &str, announced: &mut Announced, probe: bool) -> Vec<String> {
        let doc = parse(body.as_bytes(), 65536).unwrap();
        let view = view_pidf(&doc, NOW);
        stanzas_for_pidf(&view, announced, &s_bare(), &romeo(), probe)
            .iter()
            .map(OutPresence::to_xml)
            .collect()
    }

    const SPEC_4_2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
          entity="pres:juliet@example.com">
  <tuple id="t-desk">
    <status><basic>open</basic></status>
    <contact priority="0.8">sip:juliet@ua7.example.com</contact>
    <note xml:lang="en">On the balcony</note>
  </tuple>
  <dm:person id="p1">
    <rpid:activities><rpid:on-the-phone/></rpid:activities>
  </dm:person>
</presence>"#;

    const T_DESK_DND: &str = "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net'>\
        <show>dnd</show><status xml:lang='en'>On the balcony</status><priority>80</priority></presence>";

    #[test]
    fn case_021_active_notify_pidf_gives_dnd_status_priority_80() {
        let mut a = Announced::default();
        assert_eq!(run(SPEC_4_2, &mut a, false), [T_DESK_DND]);
        assert_eq!(a.resources().collect::<Vec<_>>(), ["t-desk"]);
    }

    #[test]
    fn case_022_identical_notify_is_deduplicated() {
        let mut a = Announced::default();
        run(SPEC_4_2, &mut a, false);
        assert_eq!(run(SPEC_4_2, &mut a, false), Vec::<String>::new());
        // A probe answer repeats the cached presence (case 26).
        assert_eq!(run(SPEC_4_2, &mut a, true), [T_DESK_DND]);
        // A change is sent.
        let changed = SPEC_4_2.replace("0.8", "0.75");
        assert_eq!(
            run(&changed, &mut a, false),
            [T_DESK_DND.replace(">80<", ">75<")]
        );
    }

    #[test]
    fn case_024_unavailable_for_every_announced_resource() {
        let mut a = Announced::default();
        run(SPEC_4_2, &mut a, false);
        let out: Vec<String> = unavailable_for_announced(&mut a, &s_bare(), &romeo())
            .iter()
            .map(OutPresence::to_xml)
            .collect();
        assert_eq!(
            out,
            ["<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net' type='unavailable'/>"]
        );
        assert!(a.is_empty());
        assert!(unavailable_for_announced(&mut a, &s_bare(), &romeo()).is_empty());
    }

    const MULTI: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:juliet@example.com">
  <tuple id="t-desk"><status><basic>closed</basic></status></tuple>
  <tuple id="ID-mobile"><status><basic>open</basic></status>
    <contact priority="0.3">sip:juliet@198.51.100.7</contact></tuple>
  <dm:person id="p"><rpid:activities><rpid:meeting/></rpid:activities>
    <dm:note>In a meeting until 3</dm:note></dm:person>
</presence>"#;

    #[test]
    fn case_061_two_tuples_closed_announced_and_open_mobile() {
        let mut a = Announced::default();
        run(SPEC_4_2, &mut a, false); // t-desk announced
        assert_eq!(
            run(MULTI, &mut a, false),
            [
                "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net' type='unavailable'/>",
                "<presence from='juliet*example.com@sip.example.net/mobile' to='romeo@example.net'>\
                 <show>dnd</show><status>In a meeting until 3</status><priority>30</priority></presence>",
            ]
        );
        assert_eq!(a.resources().collect::<Vec<_>>(), ["mobile"]);
    }

    #[test]
    fn case_062_unknown_basic_is_never_online() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
            xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:juliet@example.com">
            <tuple id="t1"><status/></tuple>
            <dm:person><rpid:activities><rpid:away/></rpid:activities></dm:person></presence>"#;
        let mut a = Announced::default();
        let bare_unavail =
            "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='unavailable'/>";
        assert_eq!(run(body, &mut a, false), [bare_unavail]);
        // Not repeated for the same state, but repeated for a probe.
        assert_eq!(run(body, &mut a, false), Vec::<String>::new());
        assert_eq!(run(body, &mut a, true), [bare_unavail]);
    }

    #[test]
    fn closed_with_note_gives_bare_unavailable_with_status() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:juliet@example.com">
            <tuple id="ID-offline"><status><basic>closed</basic></status><note>Gone to Mantua</note></tuple></presence>"#;
        let mut a = Announced::default();
        assert_eq!(
            run(body, &mut a, false),
            ["<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='unavailable'>\
              <status>Gone to Mantua</status></presence>"]
        );
        // After going online and back offline: per-resource unavailable only.
        run(SPEC_4_2, &mut a, false);
        assert_eq!(
            run(body, &mut a, false),
            ["<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net' type='unavailable'/>"]
        );
        assert_eq!(run(body, &mut a, false), Vec::<String>::new());
    }

    #[test]
    fn case_063_basic_with_spaces_and_capital_is_open() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:juliet@example.com"><tuple id="t"><status><basic> Open </basic></status></tuple></presence>"#;
        let mut a = Announced::default();
        assert_eq!(
            run(body, &mut a, false),
            ["<presence from='juliet*example.com@sip.example.net/t' to='romeo@example.net'/>"]
        );
    }

    #[test]
    fn case_064_legacy_activity_gives_away() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:es="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="sip:juliet@example.com"><tuple id="t"><status><basic>open</basic><es:activities><es:activity>away</es:activity></es:activities></status></tuple></presence>"#;
        let mut a = Announced::default();
        assert_eq!(
            run(body, &mut a, false),
            ["<presence from='juliet*example.com@sip.example.net/t' to='romeo@example.net'><show>away</show></presence>"]
        );
    }

    #[test]
    fn case_065_expired_vacation_is_ignored() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:juliet@example.com"><tuple id="t"><status><basic>open</basic></status></tuple><dm:person><rpid:activities until="2026-11-26T05:00:00Z"><rpid:vacation/></rpid:activities></dm:person></presence>"#;
        let mut a = Announced::default();
        assert_eq!(
            run(body, &mut a, false),
            ["<presence from='juliet*example.com@sip.example.net/t' to='romeo@example.net'/>"]
        );
        // Still valid (until in the future): xa. Starting in the future: ignored.
        let valid = body.replace("05:00:00Z", "07:00:00Z");
        assert_eq!(
            run(&valid, &mut Announced::default(), false),
            ["<presence from='juliet*example.com@sip.example.net/t' to='romeo@example.net'><show>xa</show></presence>"]
        );
        let future = body.replace(
            "until=\"2026-11-26T05:00:00Z\"",
            "from=\"2026-11-26T07:00:00Z\"",
        );
        assert_eq!(
            run(&future, &mut Announced::default(), false),
            ["<presence from='juliet*example.com@sip.example.net/t' to='romeo@example.net'/>"]
        );
    }

    #[test]
    fn case_066_must_understand_drops_activities() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:x="urn:example:x" entity="sip:juliet@example.com"><tuple id="t"><status><basic>open</basic></status></tuple><dm:person><rpid:activities><x:foo mustUnderstand="true"/><rpid:away/></rpid:activities></dm:person></presence>"#;
        assert_eq!(
            run(body, &mut Announced::default(), false),
            ["<presence from='juliet*example.com@sip.example.net/t' to='romeo@example.net'/>"]
        );
    }

    #[test]
    fn case_067_japanese_and_emoji_status_byte_exact() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:juliet@example.com"><tuple id="t"><status><basic>open</basic></status><note xml:lang="ja">会議中 🎌</note></tuple></presence>"#;
        let out = run(body, &mut Announced::default(), false);
        assert_eq!(
            out,
            [
                "<presence from='juliet*example.com@sip.example.net/t' to='romeo@example.net'>\
              <status xml:lang='ja'>会議中 🎌</status></presence>"
            ]
        );
        assert!(out[0].as_bytes().windows(4).any(|w| w == "🎌".as_bytes()));
    }

    #[test]
    fn cases_068_069_bad_bodies_produce_no_view() {
        // The caller keeps the previous state: nothing reaches the mapping.
        assert!(matches!(
            parse(b"<presence><tuple>", 65536),
            Err(crate::pidf::PidfError::NotWellFormed(_))
        ));
        assert_eq!(
            parse(b"<!DOCTYPE x [<!ENTITY a \"b\">]><presence/>", 65536),
            Err(crate::pidf::PidfError::Doctype)
        );
    }

    fn view_of(body: &str) -> Vec<TupleView> {
        view_pidf(&parse(body.as_bytes(), 65536).unwrap(), NOW)
    }

    #[test]
    fn strongest_activity_class_wins_and_tuple_overrides_person() {
        let v = view_of(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" entity="e">
            <tuple id="a"><status><basic>open</basic></status></tuple>
            <tuple id="b"><status><basic>open</basic><r:activities><r:meal/></r:activities></status></tuple>
            <dm:person><r:activities><r:meal/><r:sleeping/><r:working/></r:activities></dm:person></presence>"#,
        );
        assert_eq!(v[0].state.show, Some(Show::Xa));
        assert_eq!(v[1].state.show, Some(Show::Away));
    }

    #[test]
    fn user_input_idle_and_note_fallback() {
        let idle = |last: &str| {
            view_of(&format!(
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" entity="e">
                <tuple id="a"><status><basic>open</basic></status></tuple>
                <dm:person><r:user-input{last}>idle</r:user-input></dm:person></presence>"#
            ))[0]
                .state
                .show
        };
        assert_eq!(idle(""), Some(Show::Away));
        assert_eq!(
            idle(" last-input=\"2026-11-26T05:40:00Z\""),
            Some(Show::Away)
        );
        assert_eq!(idle(" last-input=\"2026-11-26T05:00:00Z\""), Some(Show::Xa));
        let note = |n: &str| {
            view_of(&format!(
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="e"><tuple id="a"><status><basic>open</basic></status><note>{n}</note></tuple></presence>"#
            ))[0]
                .state
                .show
        };
        assert_eq!(note("Away"), Some(Show::Away));
        assert_eq!(note("On the phone"), Some(Show::Dnd));
        assert_eq!(note("DND"), Some(Show::Dnd));
        assert_eq!(note("Lunch"), None);
    }

    #[test]
    fn status_precedence_and_languages() {
        let v = view_of(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" entity="e">
            <tuple id="a"><status><basic>open</basic></status></tuple>
            <tuple id="b"><status><basic>open</basic></status><note xml:lang="en">t1</note><note xml:lang="en">t2</note><note xml:lang="de">t3</note></tuple>
            <note>presence-level</note>
            <dm:person><r:activities><r:note>act note</r:note><r:other>other text</r:other></r:activities></dm:person></presence>"#,
        );
        assert_eq!(
            v[0].state.statuses,
            vec![Status::new(None, "presence-level")]
        );
        assert_eq!(
            v[1].state.statuses,
            vec![Status::new(Some("en"), "t1"), Status::new(Some("de"), "t3")]
        );
        let v = view_of(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" entity="e">
            <tuple id="a"><status><basic>open</basic></status></tuple>
            <dm:person><r:activities><r:note>act note</r:note><r:other>other text</r:other></r:activities></dm:person></presence>"#,
        );
        assert_eq!(v[0].state.statuses, vec![Status::new(None, "other text")]);
        assert_eq!(v[0].state.show, None);
    }

    #[test]
    fn resource_names_and_priority_rounding() {
        assert_eq!(resource_name("ID-mobile"), "mobile");
        assert_eq!(resource_name("1000"), "1000");
        assert_eq!(resource_name("ID-"), "t-b2b8ed593552b8f9"); // sha1("ID-")
        assert_eq!(
            resource_name("a\u{7}b"),
            format!("t-{}", &hex_sha1("a\u{7}b")[..16])
        );
        let v = view_of(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="e"><tuple id="a"><status><basic>open</basic></status><contact priority="0.125">x</contact></tuple><tuple id="b"><status><basic>open</basic></status><contact priority="0.124">x</contact></tuple><tuple id="ID-b"><status><basic>open</basic></status></tuple></presence>"#,
        );
        assert_eq!(
            (v[0].state.priority, v[1].state.priority),
            (Some(13), Some(12))
        );
        // Duplicate resource name: the first open tuple wins.
        assert_eq!(v.len(), 2);
    }

    fn hex_sha1(s: &str) -> String {
        let mut o = String::new();
        sha1_hex16(s, &mut o);
        o
    }

    #[test]
    fn fingerprints_differ_for_different_states() {
        let a = Availability {
            show: Some(Show::Away),
            statuses: vec![Status::new(None, "x")],
            priority: Some(1),
        };
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.priority = Some(2);
        assert_ne!(fingerprint(&a), fingerprint(&b));
        b = a.clone();
        b.statuses[0].text.push('y');
        assert_ne!(fingerprint(&a), fingerprint(&b));
        b = a.clone();
        b.statuses[0].lang = Some(String::new());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_ne!(
            fingerprint(&Vec::<Status>::new()),
            fingerprint(&vec![Status::new(None, "")])
        );
    }

    #[test]
    fn announced_keeps_resources_in_order_and_fingerprints_in_place() {
        let mut a = Announced::default();
        assert!(a.is_empty() && a.packed.is_none() && a.offline().is_none());
        a.set_offline(Some(7));
        assert_eq!((a.offline(), a.is_empty()), (Some(7), true));
        a.set_fingerprint("phone", 1);
        a.set_fingerprint("desk", 2);
        a.set_offline(None);
        let block = a.packed.as_ref().map(|p| p.as_ptr());
        a.set_fingerprint("phone", 3);
        // Same block: a changed fingerprint is written in place.
        assert_eq!(a.packed.as_ref().map(|p| p.as_ptr()), block);
        assert_eq!(a.fingerprint_of("phone"), Some(3));
        assert_eq!(a.fingerprint_of("desk"), Some(2));
        assert_eq!(a.resources().collect::<Vec<_>>(), ["phone", "desk"]);
        assert_eq!(a.remove_unless(|r| r == "desk"), ["phone"]);
        assert_eq!(a.resources().collect::<Vec<_>>(), ["desk"]);
        assert_eq!(a.remove_unless(|_| false), ["desk"]);
        assert_eq!(a, Announced::default());
    }

    #[test]
    fn announced_and_aggregate_stay_small() {
        assert!(
            std::mem::size_of::<Announced>() <= 16,
            "{}",
            std::mem::size_of::<Announced>()
        );
        assert!(
            std::mem::size_of::<XmppAggregate>() <= 64,
            "{}",
            std::mem::size_of::<XmppAggregate>()
        );
        assert!(
            std::mem::size_of::<Entry>() <= 64,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }
}
