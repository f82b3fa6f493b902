//! The two peers the tool plays: the SIP presence server / SIP watchers (one UDP socket) and
//! the XMPP server (the component listener). Each runs on plain threads with blocking sockets
//! and short read timeouts, so every loop sees the stop flag.

use crate::cli::{Args, ImDir, Scenario};
use crate::shared::{index_of, seq_of, seq_prefix, Shared, C};
use crate::sip::{self, push_all, push_dec, Dec, First, Msg};
use crate::xmpp::{self, Ev, Scanner};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Component link states (`Ctx::link`).
pub const LINK_WAITING: u8 = 0;
pub const LINK_UP: u8 = 1;
pub const LINK_REFUSED: u8 = 2;
pub const LINK_CLOSED: u8 = 3;

/// RFC 3261 T1 and T2: retransmission of the initial NOTIFY / SUBSCRIBE over UDP.
pub const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Retransmissions before giving up (about Timer F, 32 s).
const MAX_RETX: u8 = 10;

/// Longest Expires we grant (scenario a).
const MAX_EXPIRES: u64 = 3600;

/// A SIP TCP or TLS connection (either direction); writes are serialized by the mutex.
pub struct TcpConn {
    pub peer: SocketAddr,
    /// TLS: `Via: SIP/2.0/TLS`, and every byte goes through the rustls session.
    pub tls: bool,
    io: Mutex<ConnIo>,
}

/// The write half of the socket and, over TLS, the session both halves share: the reader
/// thread reads the socket on its own clone, then feeds the records in under this lock.
struct ConnIo {
    stream: TcpStream,
    tls: Option<rustls::Connection>,
}

impl TcpConn {
    pub fn new(stream: TcpStream) -> std::io::Result<TcpConn> {
        Self::with_tls(stream, None)
    }

    pub fn with_tls(
        stream: TcpStream,
        mut tls: Option<rustls::Connection>,
    ) -> std::io::Result<TcpConn> {
        if let Some(t) = tls.as_mut() {
            // The tool writes bursts (a cork of answers, a tick's NOTIFYs): no plaintext cap,
            // every write is flushed to the socket at once.
            t.set_buffer_limit(None);
        }
        Ok(TcpConn {
            peer: stream.peer_addr()?,
            tls: tls.is_some(),
            io: Mutex::new(ConnIo { stream, tls }),
        })
    }

    /// Writes all of `bytes` (encrypted over TLS, in as few records as rustls makes).
    pub fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        let ConnIo { stream, tls } = &mut *io;
        match tls {
            None => stream.write_all(bytes),
            Some(t) => {
                t.writer().write_all(bytes)?;
                while t.wants_write() {
                    t.write_tls(stream)?;
                }
                Ok(())
            }
        }
    }

    /// TLS: feeds `raw` (as read from the socket) to the session, appends the plaintext it
    /// yields to `plain`, and sends what the session has to send (handshake records).
    fn decrypt(&self, mut raw: &[u8], plain: &mut Vec<u8>) -> std::io::Result<()> {
        let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        let ConnIo { stream, tls } = &mut *io;
        let Some(t) = tls else {
            plain.extend_from_slice(raw);
            return Ok(());
        };
        while !raw.is_empty() {
            t.read_tls(&mut raw)?;
            let state = t
                .process_new_packets()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut left = state.plaintext_bytes_to_read();
            while left > 0 {
                let at = plain.len();
                plain.resize(at + left, 0);
                let n = t.reader().read(plain.get_mut(at..).unwrap_or_default())?;
                plain.truncate(at + n);
                if n == 0 {
                    break;
                }
                left -= n.min(left);
            }
        }
        while t.wants_write() {
            t.write_tls(stream)?;
        }
        Ok(())
    }
}

thread_local! {
    /// Messages for the TCP connection this thread is reading, held until the read's messages
    /// are all handled and then written at once ([`Cork`]): a 200 and its NOTIFY, and the
    /// answers to a burst, cost one `write` instead of one each. The pair count is kept.
    static CORK: RefCell<Option<(*const TcpConn, Vec<u8>, u64)>> = const { RefCell::new(None) };
}

/// Appends `bytes` to this thread's cork when it is open for `conn`.
fn cork_append(conn: &Arc<TcpConn>, bytes: &[u8]) -> bool {
    CORK.with(|c| match c.borrow_mut().as_mut() {
        Some((p, buf, n)) if std::ptr::eq(*p, Arc::as_ptr(conn)) => {
            buf.extend_from_slice(bytes);
            *n += 1;
            true
        }
        _ => false,
    })
}

/// Holds this thread's writes to one connection until [`Cork::flush`] (or drop).
pub struct Cork<'a> {
    ctx: &'a Ctx,
    conn: Arc<TcpConn>,
}

impl<'a> Cork<'a> {
    pub fn open(ctx: &'a Ctx, conn: Arc<TcpConn>) -> Cork<'a> {
        CORK.with(|c| {
            *c.borrow_mut() = Some((Arc::as_ptr(&conn), Vec::with_capacity(64 * 1024), 0))
        });
        Cork { ctx, conn }
    }

    /// Writes what was held, counting each message as sent (or failed).
    pub fn flush(&self) {
        let held = CORK.with(|c| {
            c.borrow_mut()
                .as_mut()
                .map(|(_, buf, n)| (std::mem::take(buf), std::mem::take(n)))
        });
        let Some((buf, n)) = held else {
            return;
        };
        if n == 0 {
            CORK.with(|c| {
                if let Some((_, b, _)) = c.borrow_mut().as_mut() {
                    *b = buf;
                }
            });
            return;
        }
        let r = self.conn.write_all(&buf);
        self.ctx.shared.add(
            if r.is_ok() {
                C::sip_tx
            } else {
                C::sip_send_errors
            },
            n,
        );
        CORK.with(|c| {
            if let Some((_, b, _)) = c.borrow_mut().as_mut() {
                let mut buf = buf;
                buf.clear();
                *b = buf;
            }
        });
    }
}

impl Drop for Cork<'_> {
    fn drop(&mut self) {
        self.flush();
        CORK.with(|c| *c.borrow_mut() = None);
    }
}

/// Where a SIP message goes: a UDP address, or a TCP connection.
#[derive(Clone)]
pub enum Route {
    Udp(SocketAddr),
    Tcp(Arc<TcpConn>),
}

impl Route {
    /// Transport token for `Via`.
    pub fn proto(&self) -> &'static str {
        match self {
            Route::Udp(_) => "UDP",
            Route::Tcp(c) if c.tls => "TLS",
            Route::Tcp(_) => "TCP",
        }
    }
}

/// One subscription dialog where we are the notifier (scenario a: the gateway subscribed).
pub struct Dialog {
    call_id: String,
    our_tag: String,
    /// Our URI (the SUBSCRIBE's To URI).
    local_uri: String,
    /// The SUBSCRIBE's From value, tag included: our NOTIFYs' To.
    remote: String,
    /// Request-URI of our NOTIFYs: the SUBSCRIBE's Contact.
    target: String,
    dest: Route,
    cseq: u32,
    expires_at: Instant,
    pub alive: bool,
    /// The initial NOTIFY until a final response arrives: bytes, next retransmission,
    /// interval, tries (RFC 3261 §17.1.2 timers, as a real presence server on UDP would).
    initial: Option<(Vec<u8>, Instant, Duration, u8)>,
    /// Constant parts of this dialog's ladder NOTIFYs, rendered once.
    tmpl: Option<Template>,
}

/// The bytes of a ladder NOTIFY between the numbers that change (branch, CSeq, expiry,
/// length, note), so the pacer only copies and prints integers.
struct Template {
    /// `NOTIFY <target> SIP/2.0` .. `;branch=z9hG4bKn` (then seq).
    head: Vec<u8>,
    /// `.<run>` .. `CSeq: ` (then CSeq).
    mid: Vec<u8>,
    /// ` NOTIFY` .. `Subscription-State: active;expires=` (then the remaining seconds).
    tail: Vec<u8>,
    /// The PIDF up to `<note>n` (then seq).
    body_head: Vec<u8>,
}

/// The PIDF of our NOTIFYs: up to the entity, then up to the note.
const PIDF_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"";
const PIDF_TUPLE: &str = "\"><tuple id=\"t1\"><status><basic>open</basic></status><note>";
const NOTE_END: &str = "</note></tuple>";
const PERSONS: [&str; 3] = [
    "",
    "<dm:person id=\"p1\"><rpid:activities><rpid:away/></rpid:activities></dm:person>",
    "<dm:person id=\"p1\"><rpid:activities><rpid:busy/></rpid:activities></dm:person>",
];
const BODY_END: &str = "</presence>";

/// Decimal digits of `n`.
fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[derive(Default)]
pub struct Dialogs {
    pub list: Vec<Dialog>,
    /// foldhash: SipHash of every Call-ID was a visible share of the tool's CPU.
    by_call: foldhash::HashMap<String, usize>,
    /// Dialogs whose initial NOTIFY may still need retransmitting (UDP): the periodic scan
    /// walks these, not every dialog, so it does not hold the lock for O(N) during set-up.
    awaiting: Vec<usize>,
}

impl Dialogs {
    /// Room for `n` dialogs up front: growing a table of 1,000,000 dialogs copied it ~20 times.
    pub fn with_capacity(n: usize) -> Dialogs {
        let mut by_call = foldhash::HashMap::default();
        by_call.reserve(n);
        Dialogs {
            list: Vec::with_capacity(n),
            by_call,
            awaiting: Vec::new(),
        }
    }
}

/// Everything the threads share.
pub struct Ctx {
    pub args: Args,
    /// Distinguishes this run's tags and Call-IDs.
    pub run: String,
    pub shared: Shared,
    pub sock: UdpSocket,
    pub dialogs: Mutex<Dialogs>,
    pub link: AtomicU8,
    /// Component-stream writer queue (set once the gateway connects).
    pub xmpp_tx: Mutex<Option<Sender<Vec<u8>>>>,
    /// Octets queued for the component stream and not yet written: grows when the gateway
    /// reads its component stream slower than we send.
    pub xmpp_backlog: AtomicU64,
    /// Scenario b: where our SUBSCRIBEs go (UDP to `--gateway-sip`, or our TCP connection).
    pub b_route: Mutex<Route>,
    pub suffixes: Suffixes,
}

/// Text the tool puts in many messages, built once per run (not per message): the fixed
/// tails of the addresses it numbers, and its own SIP address.
pub struct Suffixes {
    /// Scenario a's SIP presentities at the component: `*sip.bench@component`.
    a_presentity: String,
    /// The same, escaped for an attribute value.
    pub a_presentity_escaped: String,
    /// Scenario b's XMPP users: `@xmpp.bench`.
    b_user: String,
    /// `--sip-listen` as text (Via, Contact): formatting the socket address for every
    /// message was a visible share of the tool's CPU.
    pub sip_listen: String,
    /// IM: the XMPP users at the gateway, after `u<i>`: `*xmpp.bench@gw.bench.local`.
    im_gateway_user: String,
    /// IM: `--body-bytes` filler octets (`x`), cut to size per message.
    im_pad: String,
    /// IM: the To-tag of our 200s to the gateway's MESSAGEs.
    pub im_tag: String,
}

impl Suffixes {
    pub fn of(a: &Args) -> Suffixes {
        let a_presentity = format!("{}{}@{}", a.separator, a.sip_domain, a.component);
        let mut a_presentity_escaped = String::new();
        xmpp::escape(&mut a_presentity_escaped, &a_presentity);
        Suffixes {
            a_presentity,
            a_presentity_escaped,
            b_user: format!("@{}", a.xmpp_domain),
            sip_listen: a.sip_listen.to_string(),
            im_gateway_user: format!("{}{}@{}", a.separator, a.xmpp_domain, a.gateway_domain),
            im_pad: "x".repeat(a.body_bytes),
            im_tag: "im-bench".into(),
        }
    }
}

impl Ctx {
    // ---- the address scheme ------------------------------------------------------------

    /// Scenario a, the subscribe stanza of XMPP watcher `w{i}` to SIP presentity `i` at the
    /// component (`p{i}*sip.bench@component`). `p<i>` needs no escaping, so the escaped JID
    /// is `p<i>` + the suffix escaped once per run.
    pub fn write_a_subscribe(&self, out: &mut Vec<u8>, i: usize) {
        let dec = Dec::new(i as u64);
        out.extend_from_slice(b"<presence type='subscribe' from='w");
        out.extend_from_slice(dec.as_bytes());
        push_all(out, &["@", &self.args.xmpp_domain, "' to='p"]);
        out.extend_from_slice(dec.as_bytes());
        push_all(out, &[&self.suffixes.a_presentity_escaped, "'/>"]);
    }

    // ---- IM: messages each way ------------------------------------------------------------

    /// Length of the body of IM message `seq`: `--body-bytes`, or `n<seq>` when longer.
    pub fn im_body_len(&self, seq: u64) -> usize {
        self.args.body_bytes.max(1 + digits(seq))
    }

    /// The body of IM message `seq`: `n<seq> ` then `x` filler up to `--body-bytes` octets
    /// (nothing to escape, the same text in the stanza and the MESSAGE).
    fn push_im_body(&self, out: &mut Vec<u8>, seq: u64) {
        let start = out.len();
        out.push(b'n');
        push_dec(out, seq);
        let used = out.len() - start;
        if used < self.args.body_bytes {
            out.push(b' ');
            let pad = self.args.body_bytes - used - 1;
            out.extend_from_slice(
                self.suffixes
                    .im_pad
                    .as_bytes()
                    .get(..pad)
                    .unwrap_or_default(),
            );
        }
    }

    /// IM XMPP -> SIP: the chat stanza of XMPP user `u<i>` to SIP user `s<i>` (at the
    /// component `s<i>*sip.bench@component`), id `x<seq>`; appended to `out`.
    pub fn write_im_stanza(&self, out: &mut Vec<u8>, i: usize, seq: u64) {
        let dec = Dec::new(i as u64);
        out.extend_from_slice(b"<message type='chat' from='u");
        out.extend_from_slice(dec.as_bytes());
        push_all(out, &["@", &self.args.xmpp_domain, "/r' to='s"]);
        out.extend_from_slice(dec.as_bytes());
        push_all(out, &[&self.suffixes.a_presentity_escaped, "' id='x"]);
        push_dec(out, seq);
        out.extend_from_slice(b"'><body>");
        self.push_im_body(out, seq);
        out.extend_from_slice(b"</body></message>");
    }

    /// IM SIP -> XMPP: the MESSAGE of SIP user `sip:s<i>@sip.bench` to XMPP user `u<i>` at
    /// the gateway (`sip:u<i>*xmpp.bench@gw.bench.local`); Call-ID `m<seq>.<run>@bench`
    /// names the message in the gateway's final response.
    pub fn write_im_message(&self, out: &mut Vec<u8>, i: usize, seq: u64, proto: &str) {
        let dec = Dec::new(i as u64);
        let sq = Dec::new(seq);
        let (a, sx) = (&self.args, &self.suffixes);
        out.clear();
        out.reserve(400 + self.im_body_len(seq));
        out.extend_from_slice(b"MESSAGE sip:u");
        out.extend_from_slice(dec.as_bytes());
        push_all(
            out,
            &[&sx.im_gateway_user, " SIP/2.0\r\nVia: SIP/2.0/", proto, " "],
        );
        push_all(
            out,
            &[
                &sx.sip_listen,
                ";branch=z9hG4bKm",
                sq.as_str(),
                ".",
                &self.run,
            ],
        );
        out.extend_from_slice(b";rport\r\nMax-Forwards: 70\r\nFrom: <sip:s");
        out.extend_from_slice(dec.as_bytes());
        push_all(
            out,
            &["@", &a.sip_domain, ">;tag=s", dec.as_str(), ".", &self.run],
        );
        out.extend_from_slice(b"\r\nTo: <sip:u");
        out.extend_from_slice(dec.as_bytes());
        push_all(
            out,
            &[&sx.im_gateway_user, ">\r\nCall-ID: m", sq.as_str(), "."],
        );
        push_all(out, &[&self.run, "@bench\r\nCSeq: 1 MESSAGE\r\n"]);
        out.extend_from_slice(b"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: ");
        push_dec(out, self.im_body_len(seq) as u64);
        out.extend_from_slice(b"\r\n\r\n");
        self.push_im_body(out, seq);
    }

    /// Message number of one of our IM Call-IDs (`m<seq>.<run>@bench`).
    pub fn im_seq(&self, call_id: Option<&str>) -> Option<u64> {
        let (m, rest) = call_id?.split_once('.')?;
        if rest.strip_suffix("@bench") != Some(self.run.as_str()) {
            return None;
        }
        let digits = m.strip_prefix('m')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Sends IM messages `from..from+k` (directions and pairs from [`Args::im_of`]): the
    /// stanzas of the batch in one component write, each MESSAGE on its own. False when
    /// the send table is full or the component link is gone.
    pub fn send_im_batch(&self, from: u64, k: u64, buf: &mut Vec<u8>) -> bool {
        let route = self
            .b_route
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut stanzas = Vec::new();
        let mut n_stanzas = 0u64;
        for seq in from..from + k {
            if !self.shared.mark_sent(seq) {
                return false;
            }
            match self.args.im_of(seq) {
                (ImDir::S2x, i) => {
                    self.write_im_message(buf, i, seq, route.proto());
                    self.shared.inc(C::message_tx);
                    self.send_sip(buf, &route);
                }
                (_, i) => {
                    if stanzas.is_empty() {
                        stanzas.reserve(k as usize * (160 + self.args.body_bytes));
                    }
                    self.write_im_stanza(&mut stanzas, i, seq);
                    n_stanzas += 1;
                }
            }
        }
        if stanzas.is_empty() {
            return true;
        }
        self.shared.add(C::stanza_tx, n_stanzas);
        self.send_xmpp(stanzas)
    }

    // ---- sending -----------------------------------------------------------------------

    pub fn send_sip(&self, bytes: &[u8], to: &Route) {
        if let Route::Tcp(c) = to {
            if c.peer.ip().is_loopback() && cork_append(c, bytes) {
                return;
            }
        }
        let r = match to {
            Route::Udp(a) if !a.ip().is_loopback() => {
                self.shared.inc(C::sip_dropped_non_loopback);
                return;
            }
            Route::Tcp(c) if !c.peer.ip().is_loopback() => {
                self.shared.inc(C::sip_dropped_non_loopback);
                return;
            }
            Route::Udp(a) => self.sock.send_to(bytes, a).map(|_| ()),
            Route::Tcp(c) => c.write_all(bytes),
        };
        match r {
            Ok(()) => self.shared.inc(C::sip_tx),
            Err(_) => self.shared.inc(C::sip_send_errors),
        }
    }

    /// Queues bytes on the component stream; false when the link is gone.
    pub fn send_xmpp(&self, bytes: Vec<u8>) -> bool {
        let g = self.xmpp_tx.lock().unwrap_or_else(|e| e.into_inner());
        let len = bytes.len() as u64;
        match g.as_ref() {
            Some(tx) => {
                self.xmpp_backlog.fetch_add(len, Ordering::Relaxed);
                let ok = tx.send(bytes).is_ok();
                if !ok {
                    self.xmpp_backlog.fetch_sub(len, Ordering::Relaxed);
                }
                ok
            }
            None => false,
        }
    }

    pub fn link_state(&self) -> u8 {
        self.link.load(Ordering::Relaxed)
    }

    // ---- scenario a: NOTIFYs ------------------------------------------------------------

    /// Writes a NOTIFY in dialog `d` (CSeq advanced) whose PIDF carries `note`.
    /// `activity` varies the RPID part so the bodies change in more than the note.
    /// Written piece by piece straight into `out` (the body length is computed first), not
    /// through `write!`: the `fmt` machinery was a fifth of the tool's CPU.
    pub fn write_notify(
        &self,
        out: &mut Vec<u8>,
        d: &mut Dialog,
        branch: &str,
        state: &str,
        note: &str,
        activity: u64,
    ) {
        d.cseq += 1;
        let person = PERSONS.get((activity % 3) as usize).copied().unwrap_or("");
        let body_len = PIDF_HEAD.len()
            + xmpp::escaped_len(&d.local_uri)
            + PIDF_TUPLE.len()
            + xmpp::escaped_len(note)
            + NOTE_END.len()
            + person.len()
            + BODY_END.len();
        let remaining = d
            .expires_at
            .saturating_duration_since(Instant::now())
            .as_secs();
        let user = sip::user_of(&d.local_uri).unwrap_or("ps");
        let listen = self.suffixes.sip_listen.as_str();
        out.clear();
        out.reserve(512 + body_len);
        push_all(
            out,
            &[
                "NOTIFY ",
                &d.target,
                " SIP/2.0\r\nVia: SIP/2.0/",
                d.dest.proto(),
                " ",
                listen,
                ";branch=z9hG4bK",
                branch,
                "\r\nMax-Forwards: 70\r\nFrom: <",
                &d.local_uri,
                ">;tag=",
                &d.our_tag,
                "\r\nTo: ",
                &d.remote,
                "\r\nCall-ID: ",
                &d.call_id,
                "\r\nCSeq: ",
            ],
        );
        push_dec(out, u64::from(d.cseq));
        push_all(
            out,
            &[
                " NOTIFY\r\nContact: <sip:",
                user,
                "@",
                listen,
                ">\r\nEvent: presence\r\n",
            ],
        );
        if state == "active" {
            out.extend_from_slice(b"Subscription-State: active;expires=");
            push_dec(out, remaining);
            out.extend_from_slice(b"\r\n");
        } else {
            push_all(out, &["Subscription-State: ", state, "\r\n"]);
        }
        out.extend_from_slice(b"Content-Type: application/pidf+xml\r\nContent-Length: ");
        push_dec(out, body_len as u64);
        push_all(out, &["\r\n\r\n", PIDF_HEAD]);
        xmpp::escape_into(out, &d.local_uri);
        out.extend_from_slice(PIDF_TUPLE.as_bytes());
        xmpp::escape_into(out, note);
        push_all(out, &[NOTE_END, person, BODY_END]);
    }

    fn template(&self, d: &Dialog) -> Template {
        // Render a NOTIFY with marker numbers and cut it at the markers.
        let mut probe = Dialog {
            call_id: d.call_id.clone(),
            our_tag: d.our_tag.clone(),
            local_uri: d.local_uri.clone(),
            remote: d.remote.clone(),
            target: d.target.clone(),
            dest: d.dest.clone(),
            cseq: 0,
            expires_at: d.expires_at,
            alive: true,
            initial: None,
            tmpl: None,
        };
        let mut s = Vec::new();
        let branch = format!("n\u{1}.{}", self.run);
        self.write_notify(&mut s, &mut probe, &branch, "active", "n\u{1}", 0);
        let text = String::from_utf8_lossy(&s).into_owned();
        let cut = |from: &str, marker: &str| -> (String, String) {
            match from.split_once(marker) {
                Some((a, b)) => (a.to_owned(), b.to_owned()),
                None => (from.to_owned(), String::new()),
            }
        };
        let (head, rest) = cut(&text, "n\u{1}");
        let head = head + "n";
        let (mid, rest) = cut(&rest, "CSeq: 1 NOTIFY");
        let mid = mid + "CSeq: ";
        let (tail, rest) = cut(&rest, "Subscription-State: active;expires=");
        let tail = " NOTIFY".to_owned() + &tail + "Subscription-State: active;expires=";
        let body_start = rest.find("\r\n\r\n").map_or(rest.len(), |i| i + 4);
        let body = rest.get(body_start..).unwrap_or("");
        let (body_head, _) = cut(body, "n\u{1}");
        Template {
            head: head.into_bytes(),
            mid: mid.into_bytes(),
            tail: tail.into_bytes(),
            body_head: (body_head + "n").into_bytes(),
        }
    }

    /// A ladder NOTIFY for update `seq` in dialog `d`: the same bytes as
    /// `write_notify(.., "n<seq>.<run>", "active", "n<seq>", seq)`, from the template.
    pub fn write_update(&self, out: &mut Vec<u8>, d: &mut Dialog, seq: u64) {
        if d.tmpl.is_none() {
            d.tmpl = Some(self.template(d));
        }
        let Some(t) = d.tmpl.as_ref() else {
            return;
        };
        d.cseq += 1;
        let remaining = d
            .expires_at
            .saturating_duration_since(Instant::now())
            .as_secs();
        let person = PERSONS.get((seq % 3) as usize).copied().unwrap_or("");
        let body_len =
            t.body_head.len() + digits(seq) + NOTE_END.len() + person.len() + BODY_END.len();
        out.clear();
        out.extend_from_slice(&t.head);
        push_dec(out, seq);
        out.extend_from_slice(&t.mid);
        push_dec(out, u64::from(d.cseq));
        out.extend_from_slice(&t.tail);
        push_dec(out, remaining);
        out.extend_from_slice(b"\r\nContent-Type: application/pidf+xml\r\nContent-Length: ");
        push_dec(out, body_len as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&t.body_head);
        push_dec(out, seq);
        push_all(out, &[NOTE_END, person, BODY_END]);
    }

    /// Sends updates `from..from+k` as NOTIFYs round-robin over `alive` dialogs (scenario a).
    /// False when the send table is full.
    pub fn send_notify_batch(&self, alive: &[usize], from: u64, k: u64, out: &mut Vec<u8>) -> bool {
        if alive.is_empty() {
            return false;
        }
        let mut t = self.dialogs.lock().unwrap_or_else(|e| e.into_inner());
        for seq in from..from + k {
            let Some(idx) = alive.get((seq % alive.len() as u64) as usize) else {
                return false;
            };
            let Some(d) = t.list.get_mut(*idx) else {
                return false;
            };
            if !self.shared.mark_sent(seq) {
                return false;
            }
            self.write_update(out, d, seq);
            let dest = d.dest.clone();
            self.send_sip(out, &dest);
        }
        true
    }

    /// A final response to the initial NOTIFY of dialog `call_id` stops its retransmission.
    fn initial_answered(&self, call_id: &str) {
        let mut t = self.dialogs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = t.by_call.get(call_id) {
            if let Some(d) = t.list.get_mut(i) {
                d.initial = None;
            }
        }
    }

    /// Retransmits unanswered initial NOTIFYs that are due (called during the set-up).
    pub fn retransmit_initial(&self) {
        let now = Instant::now();
        let mut guard = self.dialogs.lock().unwrap_or_else(|e| e.into_inner());
        let t = &mut *guard;
        let (list, awaiting) = (&mut t.list, &mut t.awaiting);
        awaiting.retain(|&i| {
            let Some(d) = list.get_mut(i) else {
                return false;
            };
            let Some((bytes, next, interval, tries)) = d.initial.as_mut() else {
                return false;
            };
            if *next > now {
                return true;
            }
            if *tries >= MAX_RETX {
                d.initial = None;
                return false;
            }
            *tries += 1;
            *interval = (*interval * 2).min(T2);
            *next = now + *interval;
            self.shared.inc(C::notify_retransmissions);
            let r = match &d.dest {
                Route::Udp(a) if a.ip().is_loopback() => self.sock.send_to(bytes, a).is_ok(),
                _ => false,
            };
            self.shared
                .inc(if r { C::sip_tx } else { C::sip_send_errors });
            true
        });
    }

    // ---- scenario b: SUBSCRIBEs and presence ----------------------------------------------

    /// Pair index of one of our Call-IDs (`b{i}.{run}@bench`).
    pub fn b_index(&self, call_id: Option<&str>) -> Option<usize> {
        let (i, rest) = call_id?.strip_prefix('b')?.split_once('.')?;
        if rest.split('@').next() != Some(self.run.as_str()) {
            return None;
        }
        i.parse::<usize>().ok().filter(|&i| i < self.args.n)
    }

    /// Initial SUBSCRIBE of SIP watcher `w{i}` to XMPP user `u{i}` via the gateway.
    pub fn write_subscribe(&self, out: &mut Vec<u8>, i: usize, proto: &str) {
        let a = &self.args;
        let target = format!(
            "sip:u{i}{}{}@{}",
            a.separator, a.xmpp_domain, a.gateway_domain
        );
        let mut s = String::with_capacity(600);
        let _ = write!(
            s,
            "SUBSCRIBE {target} SIP/2.0\r\nVia: SIP/2.0/{proto} {l};branch=z9hG4bKs{i}.{r};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:w{i}@{sd}>;tag=w{i}.{r}\r\nTo: <{target}>\r\n\
Call-ID: b{i}.{r}@bench\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{i}@{l}{tp}>\r\n\
Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n",
            l = a.sip_listen,
            r = self.run,
            sd = a.sip_domain,
            tp = if proto == "TCP" { ";transport=tcp" } else { "" }
        );
        out.clear();
        out.extend_from_slice(s.as_bytes());
    }

    /// Available presence of XMPP user `u{i}` to its SIP watcher, status `status`.
    pub fn write_b_presence(&self, out: &mut String, i: usize, status: &str, show: u64) {
        let a = &self.args;
        let _ = write!(
            out,
            "<presence from='u{i}@{}/res' to='w{i}{}{}@{}'>",
            a.xmpp_domain, a.separator, a.sip_domain, a.component
        );
        match show % 3 {
            1 => out.push_str("<show>away</show>"),
            2 => out.push_str("<show>dnd</show>"),
            _ => {}
        }
        out.push_str("<status>");
        xmpp::escape(out, status);
        out.push_str("</status></presence>");
    }
}

// ---- SIP receiver ----------------------------------------------------------------------

/// Receives until stopped; answers requests, counts responses.
pub fn sip_rx_loop(ctx: &Ctx) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(2048);
    while !ctx.shared.stopping() {
        match ctx.sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                ctx.shared.inc(C::sip_rx);
                if let Some(data) = buf.get(..n) {
                    handle_sip(ctx, data, &Route::Udp(peer), &mut out);
                }
            }
            // Timeouts (to see the stop flag) and ICMP errors from earlier sends.
            Err(_) => continue,
        }
    }
}

fn respond(ctx: &Ctx, req: &Msg<'_>, peer: &Route, code: u16, reason: &str, extra: &str) {
    let mut out = Vec::with_capacity(512);
    sip::write_response(&mut out, req, code, reason, None, extra);
    ctx.send_sip(&out, peer);
}

fn handle_sip(ctx: &Ctx, data: &[u8], peer: &Route, out: &mut Vec<u8>) {
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    let Some(m) = sip::parse(data) else {
        ctx.shared.inc(C::sip_unparsed);
        return;
    };
    match m.first {
        First::Response { code } => {
            let ok = (200..300).contains(&code);
            match m.cseq_method() {
                Some("NOTIFY") => {
                    if code >= 200
                        && m.get("cseq").and_then(|c| c.split_whitespace().next()) == Some("1")
                    {
                        ctx.initial_answered(m.get("call-id").unwrap_or(""));
                    }
                    ctx.shared.inc(if ok {
                        C::response_2xx_to_notify
                    } else {
                        C::response_other_to_notify
                    });
                    ctx.shared.code(code);
                }
                Some("MESSAGE") => {
                    if code < 200 {
                        return;
                    }
                    let first = ctx
                        .im_seq(m.get("call-id"))
                        .is_some_and(|seq| ctx.shared.mark_response(seq, code));
                    if first {
                        ctx.shared.inc(if ok {
                            C::response_2xx_to_message
                        } else {
                            C::response_other_to_message
                        });
                        ctx.shared.code(code);
                    }
                }
                Some("SUBSCRIBE") => {
                    if code >= 200 {
                        if let Some(i) = ctx.b_index(m.get("call-id")) {
                            ctx.shared.mark_answered(i);
                        }
                    }
                    ctx.shared.inc(if ok {
                        C::response_2xx_to_subscribe
                    } else {
                        C::response_other_to_subscribe
                    });
                    ctx.shared.code(code);
                }
                _ => {}
            }
        }
        First::Request { method, .. } => match method {
            "SUBSCRIBE" => on_subscribe(ctx, &m, peer, out),
            "NOTIFY" => on_notify(ctx, &m, peer),
            "ACK" => {}
            "MESSAGE" => on_message(ctx, &m, peer, out),
            "OPTIONS" => {
                ctx.shared.inc(C::other_request_rx);
                respond(ctx, &m, peer, 200, "OK", "");
            }
            "PUBLISH" => {
                ctx.shared.inc(C::other_request_rx);
                let extra = format!("SIP-ETag: e{}\r\nExpires: 3600\r\n", ctx.run);
                respond(ctx, &m, peer, 200, "OK", &extra);
            }
            _ => {
                ctx.shared.inc(C::other_request_rx);
                respond(
                    ctx,
                    &m,
                    peer,
                    501,
                    "Not Implemented",
                    "Allow: SUBSCRIBE, NOTIFY, PUBLISH, OPTIONS, MESSAGE\r\n",
                );
            }
        },
    }
}

/// The presence server's side of a SUBSCRIBE from the gateway (scenario a, or any scenario
/// where the gateway subscribes).
fn on_subscribe(ctx: &Ctx, m: &Msg<'_>, peer: &Route, out: &mut Vec<u8>) {
    ctx.shared.inc(C::subscribe_rx);
    if m.get("event").map(sip::token) != Some("presence") {
        respond(ctx, m, peer, 489, "Bad Event", "Allow-Events: presence\r\n");
        return;
    }
    let (Some(call_id), Some(from), Some(to)) = (m.get("call-id"), m.get("from"), m.get("to"))
    else {
        respond(ctx, m, peer, 400, "Missing Headers", "");
        return;
    };
    let expires = m
        .get("expires")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(MAX_EXPIRES)
        .min(MAX_EXPIRES);
    let now = Instant::now();
    let contact_hdr = |d: &Dialog| {
        let mut h = String::with_capacity(96);
        for p in [
            "Contact: <sip:",
            sip::user_of(&d.local_uri).unwrap_or("ps"),
            "@",
            &ctx.suffixes.sip_listen,
            ">\r\nExpires: ",
            Dec::new(expires).as_str(),
            "\r\n",
        ] {
            h.push_str(p);
        }
        h
    };
    let mut t = ctx.dialogs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&idx) = t.by_call.get(call_id) {
        let Some(d) = t.list.get_mut(idx) else {
            return;
        };
        let to_tag = sip::tag_of(to);
        if to_tag.is_none() {
            // A retransmission of the initial SUBSCRIBE: same answer, no second NOTIFY.
            ctx.shared.inc(C::subscribe_retransmission_rx);
            sip::write_response(out, m, 200, "OK", Some(&d.our_tag), &contact_hdr(d));
            ctx.send_sip(out, peer);
            out.clear();
            return;
        }
        if to_tag != Some(d.our_tag.as_str()) {
            drop(t);
            respond(ctx, m, peer, 481, "Subscription Does Not Exist", "");
            return;
        }
        ctx.shared.inc(C::subscribe_refresh_rx);
        d.expires_at = now + Duration::from_secs(expires);
        sip::write_response(out, m, 200, "OK", None, &contact_hdr(d));
        ctx.send_sip(out, peer);
        let branch = format!("r{idx}.{}", d.cseq);
        if expires == 0 {
            d.alive = false;
            ctx.write_notify(out, d, &branch, "terminated;reason=timeout", "bye", 0);
        } else {
            ctx.write_notify(out, d, &branch, "active", "refresh", 0);
        }
        let dest = d.dest.clone();
        ctx.send_sip(out, &dest);
        out.clear();
        return;
    }
    if sip::tag_of(to).is_some() {
        drop(t);
        respond(ctx, m, peer, 481, "Subscription Does Not Exist", "");
        return;
    }
    let idx = t.list.len();
    let mut d = Dialog {
        call_id: call_id.to_owned(),
        our_tag: ["ps", Dec::new(idx as u64).as_str(), ".", &ctx.run].concat(),
        local_uri: sip::uri_of(to).to_owned(),
        remote: from.to_owned(),
        target: m
            .get("contact")
            .map(sip::uri_of)
            .unwrap_or_else(|| sip::uri_of(from))
            .to_owned(),
        dest: peer.clone(),
        cseq: 0,
        expires_at: now + Duration::from_secs(expires),
        alive: expires > 0,
        initial: None,
        tmpl: None,
    };
    sip::write_response(out, m, 200, "OK", Some(&d.our_tag), &contact_hdr(&d));
    ctx.send_sip(out, peer);
    let branch = ["i", Dec::new(idx as u64).as_str(), ".", &ctx.run].concat();
    let state = if expires == 0 {
        "terminated;reason=timeout"
    } else {
        "active"
    };
    ctx.write_notify(out, &mut d, &branch, state, "init", 0);
    ctx.send_sip(out, peer);
    if matches!(peer, Route::Udp(_)) {
        d.initial = Some((out.clone(), now + T1, T1, 0));
        t.awaiting.push(idx);
    }
    out.clear();
    t.by_call.insert(d.call_id.clone(), idx);
    t.list.push(d);
}

/// The SIP user's side of an IM MESSAGE from the gateway (XMPP -> SIP): `200 OK` at once,
/// and the body's `n<seq>` is the delivery. Any MESSAGE is answered, ours or not.
fn on_message(ctx: &Ctx, m: &Msg<'_>, peer: &Route, out: &mut Vec<u8>) {
    ctx.shared.inc(C::message_rx);
    match seq_prefix(m.body, b'n') {
        Some(seq) => ctx.shared.mark_delivered(seq),
        None => ctx.shared.inc(C::message_unmatched_rx),
    }
    out.clear();
    sip::write_response(out, m, 200, "OK", Some(&ctx.suffixes.im_tag), "");
    ctx.send_sip(out, peer);
    out.clear();
}

/// The SIP watcher's side of a NOTIFY from the gateway (scenario b).
fn on_notify(ctx: &Ctx, m: &Msg<'_>, peer: &Route) {
    ctx.shared.inc(C::notify_rx);
    let Some(i) = ctx.b_index(m.get("call-id")) else {
        ctx.shared.inc(C::notify_unknown_dialog_rx);
        respond(ctx, m, peer, 481, "Subscription Does Not Exist", "");
        return;
    };
    respond(ctx, m, peer, 200, "OK", "");
    match m.get("subscription-state").map(sip::token) {
        Some(s) if s.eq_ignore_ascii_case("active") => {
            ctx.shared.inc(C::notify_active_rx);
            ctx.shared.mark_setup_done(i);
        }
        Some(s) if s.eq_ignore_ascii_case("pending") => ctx.shared.inc(C::notify_pending_rx),
        Some(s) if s.eq_ignore_ascii_case("terminated") => ctx.shared.inc(C::notify_terminated_rx),
        _ => {}
    }
    if let Some(seq) = sip::first_note(m.body).and_then(seq_of) {
        ctx.shared.mark_delivered(seq);
    }
}

/// Accepts SIP TCP connections on `--sip-listen` (or TLS ones on `--sip-tls-listen` when
/// `tls` is given) until stopped; one reader thread each.
pub fn sip_tcp_accept_loop(
    ctx: Arc<Ctx>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut threads = Vec::new();
    while !ctx.shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                let c = ctx.clone();
                let tls = tls.clone();
                threads.push(std::thread::spawn(move || sip_tcp_start(&c, stream, tls)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Prepares an accepted or connected SIP TCP stream (a TLS server session over it when `tls`
/// is given) and reads it until stopped.
pub fn sip_tcp_start(ctx: &Ctx, stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_nodelay(true))
        .and_then(|_| stream.set_read_timeout(Some(Duration::from_millis(100))))
        .and_then(|_| stream.try_clone());
    let Ok(writer) = setup else {
        return;
    };
    let session = match tls.map(rustls::ServerConnection::new) {
        None => None,
        Some(Ok(s)) => Some(rustls::Connection::Server(s)),
        Some(Err(_)) => {
            ctx.shared.inc(C::sip_send_errors);
            return;
        }
    };
    let Ok(conn) = TcpConn::with_tls(writer, session) else {
        return;
    };
    sip_tcp_read_loop(ctx, Arc::new(conn), stream);
}

/// Reads one SIP TCP connection: Content-Length framing, then the same handling as UDP.
pub fn sip_tcp_read_loop(ctx: &Ctx, conn: Arc<TcpConn>, mut stream: TcpStream) {
    let cork = Cork::open(ctx, conn.clone());
    let route = Route::Tcp(conn);
    // Reads land in `buf` after the `filled` bytes kept from the last read (a partial
    // message); only those move to the front afterwards. (Reading into a separate chunk
    // and appending copied every byte received once more.)
    const READ: usize = 1 << 16;
    let mut buf = vec![0u8; READ];
    let mut filled = 0;
    let mut out = Vec::with_capacity(2048);
    // TLS: records land here first; their plaintext is appended to `buf`.
    let raw_tls = route_tls(&route);
    let mut handshake_counted = false;
    let mut raw = if raw_tls { vec![0u8; READ] } else { Vec::new() };
    while !ctx.shared.stopping() {
        if buf.len() - filled < READ {
            buf.resize(filled + READ, 0);
        }
        let target = if raw.is_empty() {
            buf.get_mut(filled..).unwrap_or_default()
        } else {
            raw.as_mut_slice()
        };
        match stream.read(target) {
            Ok(0) => return,
            Ok(n) if !raw.is_empty() => {
                buf.truncate(filled);
                let Route::Tcp(c) = &route else {
                    return;
                };
                if c.decrypt(raw.get(..n).unwrap_or_default(), &mut buf)
                    .is_err()
                {
                    ctx.shared.inc(C::sip_unparsed);
                    return;
                }
                let got = buf.len() - filled;
                filled += got;
                if got > 0 && !handshake_counted {
                    handshake_counted = true;
                    ctx.shared.inc(C::sip_tls_sessions);
                }
                if got == 0 {
                    continue;
                }
            }
            Ok(n) => filled += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return,
        }
        let data = buf.get(..filled).unwrap_or_default();
        let mut used = 0;
        loop {
            match sip::frame(data.get(used..).unwrap_or_default()) {
                sip::Frame::Need => break,
                sip::Frame::Skip(k) => used += k,
                sip::Frame::Message(k) => {
                    ctx.shared.inc(C::sip_rx);
                    ctx.shared.inc(C::sip_tcp_rx);
                    if raw_tls {
                        ctx.shared.inc(C::sip_tls_rx);
                    }
                    if let Some(m) = data.get(used..used + k) {
                        handle_sip(ctx, m, &route, &mut out);
                    }
                    used += k;
                }
                sip::Frame::Bad => {
                    ctx.shared.inc(C::sip_unparsed);
                    return;
                }
            }
        }
        cork.flush();
        buf.copy_within(used..filled, 0);
        filled -= used;
    }
}

/// Whether the route is a TLS connection.
fn route_tls(r: &Route) -> bool {
    matches!(r, Route::Tcp(c) if c.tls)
}

/// Scenario b over TCP: connects to the gateway and returns the route for our SUBSCRIBEs;
/// the reader runs on its own thread.
pub fn sip_tcp_connect(
    ctx: &Arc<Ctx>,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<Route, String> {
    let to = ctx.args.gateway_sip;
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("SIP TCP connect to {to}: {e}"))?;
    let prepared = stream
        .set_nodelay(true)
        .and_then(|_| stream.set_read_timeout(Some(Duration::from_millis(100))))
        .and_then(|_| stream.try_clone())
        .and_then(TcpConn::new)
        .map_err(|e| format!("SIP TCP socket: {e}"))?;
    let conn = Arc::new(prepared);
    let c = ctx.clone();
    let reader_conn = conn.clone();
    threads.push(std::thread::spawn(move || {
        sip_tcp_read_loop(&c, reader_conn, stream)
    }));
    Ok(Route::Tcp(conn))
}

// ---- XMPP server side ------------------------------------------------------------------

enum Phase {
    Header,
    Handshake,
    Session,
}

/// Writes all of `bytes`, retrying on the socket's write timeout until the tool stops: a
/// gateway that no longer reads its component stream must not hang the tool at exit.
/// False on a write error or when stopping.
fn write_or_stop(ctx: &Ctx, stream: &mut TcpStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if ctx.shared.stopping() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Writes queued bytes on the component stream until the queue closes or the tool stops.
/// `Ctx::xmpp_backlog` counts what is queued and not yet written.
pub fn xmpp_writer_loop(ctx: &Ctx, mut stream: TcpStream, rx: Receiver<Vec<u8>>) {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(mut bytes) => {
                // Coalesce what else is queued into one write.
                while let Ok(more) = rx.try_recv() {
                    bytes.extend_from_slice(&more);
                    if bytes.len() > 1 << 20 {
                        break;
                    }
                }
                let ok = write_or_stop(ctx, &mut stream, &bytes);
                ctx.xmpp_backlog
                    .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
                if !ok {
                    if !ctx.shared.stopping() {
                        ctx.link.store(LINK_CLOSED, Ordering::Relaxed);
                    }
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) if ctx.shared.stopping() => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = stream.write_all(b"</stream:stream>");
}

/// Reads the component stream: handshake, then the gateway's stanzas.
pub fn xmpp_reader_loop(ctx: &Ctx, mut stream: TcpStream) {
    let mut sc = Scanner::default();
    let mut phase = Phase::Header;
    let stream_id = format!("bench{}", ctx.run);
    let mut buf = vec![0u8; 65536];
    while !ctx.shared.stopping() {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => break,
        };
        let mut reply = String::new();
        let mut refused = false;
        let mut ended = false;
        let r = sc.feed(buf.get(..n).unwrap_or_default(), |ev| match (&phase, ev) {
            (Phase::Header, Ev::Start(_)) => {
                let _ = write!(
                    reply,
                    "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' from='{}' id='{}'>",
                    ctx.args.component, stream_id
                );
                phase = Phase::Handshake;
            }
            (Phase::Handshake, Ev::Element(el)) if xmpp::name_of(el) == b"handshake" => {
                let want = xmpp::handshake_digest(&stream_id, &ctx.args.secret);
                let got = xmpp::text_of(el).unwrap_or_default();
                if got.trim().eq_ignore_ascii_case(&want) {
                    reply.push_str("<handshake/>");
                    phase = Phase::Session;
                } else {
                    reply.push_str("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>");
                    refused = true;
                }
            }
            (Phase::Session, Ev::Element(el)) => on_stanza(ctx, el, &mut reply),
            (_, Ev::End) => ended = true,
            _ => {}
        });
        if !reply.is_empty() {
            // Before the session the writer may not exist yet: write directly.
            if matches!(phase, Phase::Session) && ctx.link_state() == LINK_UP {
                ctx.send_xmpp(reply.into_bytes());
            } else if stream.write_all(reply.as_bytes()).is_err() {
                break;
            }
        }
        if matches!(phase, Phase::Session) && ctx.link_state() == LINK_WAITING {
            ctx.link.store(LINK_UP, Ordering::Relaxed);
        }
        if refused {
            ctx.link.store(LINK_REFUSED, Ordering::Relaxed);
            return;
        }
        if r.is_err() || ended {
            break;
        }
    }
    if ctx.link_state() != LINK_REFUSED {
        ctx.link.store(LINK_CLOSED, Ordering::Relaxed);
    }
}

/// An attribute value as text; empty when absent or not UTF-8.
fn text_or_empty(v: Option<&[u8]>) -> &str {
    v.and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("")
}

/// One stanza from the gateway.
fn on_stanza(ctx: &Ctx, el: &[u8], reply: &mut String) {
    let s = &ctx.shared;
    s.inc(C::stanza_rx);
    if xmpp::name_of(el) == b"message" {
        on_message_stanza(s, el);
        return;
    }
    if xmpp::name_of(el) != b"presence" {
        s.inc(C::stanza_non_presence_rx);
        return;
    }
    let [typ, from, to] = xmpp::attrs(el, ["type", "from", "to"]);
    // Addresses become text only where they are used (most stanzas use neither); a value
    // that is not UTF-8 reads as absent, as before.
    let typ = match typ {
        Some(t) if !t.is_ascii() && std::str::from_utf8(t).is_err() => None,
        t => t,
    };
    let a = &ctx.args;
    match typ {
        None => {
            s.inc(C::stanza_available_rx);
            if let Some(seq) = xmpp::child_text(el, "status").as_deref().and_then(seq_of) {
                s.mark_delivered(seq);
            }
        }
        Some(b"unavailable") => s.inc(C::stanza_unavailable_rx),
        Some(b"subscribed") => {
            s.inc(C::stanza_subscribed_rx);
            if a.scenario == Scenario::A {
                if let Some(i) = index_of(text_or_empty(from), "p", &ctx.suffixes.a_presentity) {
                    s.mark_setup_done(i);
                }
            }
        }
        Some(b"subscribe") => {
            s.inc(C::stanza_subscribe_rx);
            // Scenario b: the SIP watcher asks the XMPP user; the user approves at once and
            // its server pushes its current presence, as a real server would.
            let user = text_or_empty(to).split('/').next().unwrap_or("");
            if let Some(i) = index_of(user, "u", &ctx.suffixes.b_user) {
                let _ = write!(
                    reply,
                    "<presence type='subscribed' from='{user}' to='{}'/>",
                    text_or_empty(from).split('/').next().unwrap_or("")
                );
                ctx.write_b_presence(reply, i, "init", 0);
                s.add(C::stanza_tx, 2);
            }
        }
        Some(b"probe") => {
            s.inc(C::stanza_probe_rx);
            let user = text_or_empty(to).split('/').next().unwrap_or("");
            if let Some(i) = index_of(user, "u", &ctx.suffixes.b_user) {
                ctx.write_b_presence(reply, i, "init", 0);
                s.inc(C::stanza_tx);
            }
        }
        Some(b"unsubscribe") => s.inc(C::stanza_unsubscribe_rx),
        Some(b"unsubscribed") => s.inc(C::stanza_unsubscribed_rx),
        Some(b"error") => s.inc(C::stanza_error_rx),
        Some(_) => s.inc(C::stanza_non_presence_rx),
    }
}

/// An IM message from the gateway (SIP -> XMPP): the body's `n<seq>` is the delivery; an
/// error stanza answering one of ours (id `x<seq>`) marks that message failed.
fn on_message_stanza(s: &Shared, el: &[u8]) {
    let [typ, id] = xmpp::attrs(el, ["type", "id"]);
    if typ == Some(b"error") {
        s.inc(C::stanza_message_error_rx);
        let cond = xmpp::error_condition(el).unwrap_or(b"(none)");
        let cond = String::from_utf8_lossy(cond).into_owned();
        *s.error_conditions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cond)
            .or_default() += 1;
        if let Some(seq) = id.and_then(|v| seq_prefix(v, b'x')) {
            s.mark_error_stanza(seq);
        }
        return;
    }
    s.inc(C::stanza_message_rx);
    match xmpp::body_raw(el).and_then(|b| seq_prefix(b, b'n')) {
        Some(seq) => s.mark_delivered(seq),
        None => s.inc(C::update_unmatched),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Option<Ctx> {
        let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
        let args = Args::default();
        Some(Ctx {
            run: "r1".into(),
            shared: Shared::new(1, 16, 16),
            sock,
            dialogs: Mutex::new(Dialogs::default()),
            link: AtomicU8::new(LINK_WAITING),
            xmpp_tx: Mutex::new(None),
            xmpp_backlog: AtomicU64::new(0),
            b_route: Mutex::new(Route::Udp(args.gateway_sip)),
            suffixes: Suffixes::of(&args),
            args,
        })
    }

    fn dialog() -> Dialog {
        Dialog {
            call_id: "c1@gw".into(),
            our_tag: "ps0.r1".into(),
            local_uri: "sip:p0@sip.bench".into(),
            remote: "<sip:w0*xmpp.bench@gw.bench.local>;tag=gw-1".into(),
            target: "sip:w0*xmpp.bench@127.0.0.1:15080".into(),
            dest: Route::Udp(SocketAddr::from(([127, 0, 0, 1], 15080))),
            cseq: 1,
            expires_at: Instant::now() + Duration::from_millis(3_600_500),
            alive: true,
            initial: None,
            tmpl: None,
        }
    }

    #[test]
    fn templated_update_is_byte_identical_to_a_formatted_notify() {
        let Some(c) = ctx() else { return };
        for seq in [0u64, 7, 12345] {
            let (mut d1, mut d2) = (dialog(), dialog());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            c.write_notify(
                &mut a,
                &mut d1,
                &format!("n{seq}.r1"),
                "active",
                &format!("n{seq}"),
                seq,
            );
            c.write_update(&mut b, &mut d2, seq);
            assert_eq!(String::from_utf8_lossy(&b), String::from_utf8_lossy(&a));
            assert_eq!(d1.cseq, d2.cseq);
        }
    }

    #[test]
    fn notify_wire_format() {
        let Some(c) = ctx() else { return };
        let mut d = dialog();
        let mut out = Vec::new();
        c.write_update(&mut out, &mut d, 5);
        let text = String::from_utf8_lossy(&out);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"sip:p0@sip.bench\"><tuple id=\"t1\"><status><basic>open</basic></status><note>n5</note></tuple><dm:person id=\"p1\"><rpid:activities><rpid:busy/></rpid:activities></dm:person></presence>";
        let want = format!(
            "NOTIFY sip:w0*xmpp.bench@127.0.0.1:15080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bKn5.r1\r\n\
Max-Forwards: 70\r\n\
From: <sip:p0@sip.bench>;tag=ps0.r1\r\n\
To: <sip:w0*xmpp.bench@gw.bench.local>;tag=gw-1\r\n\
Call-ID: c1@gw\r\n\
CSeq: 2 NOTIFY\r\n\
Contact: <sip:p0@127.0.0.1:15060>\r\n\
Event: presence\r\n\
Subscription-State: active;expires=3600\r\n\
Content-Type: application/pidf+xml\r\n\
Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(text, want);
        let Some(m) = sip::parse(&out) else {
            panic!("unparseable NOTIFY")
        };
        assert_eq!(sip::first_note(m.body), Some("n5"));
    }

    const SUBSCRIBE: &str = "SUBSCRIBE sip:p7@sip.bench SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15080;branch=z9hG4bK-1;rport\r\n\
From: <sip:w7*xmpp.bench@gw.bench.local>;tag=gw-1\r\n\
To: <sip:p7@sip.bench>\r\n\
Call-ID: c7@gw\r\n\
CSeq: 1 SUBSCRIBE\r\n\
Contact: <sip:w7*xmpp.bench@127.0.0.1:15080>\r\n\
Event: presence\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

    /// Over UDP the initial NOTIFY waits for its answer in `awaiting`; once answered, the
    /// next retransmission pass drops it and no longer walks it.
    #[test]
    fn answered_initial_notify_leaves_the_retransmission_list() {
        let Some(c) = ctx() else { return };
        let Ok(gw) = UdpSocket::bind("127.0.0.1:0") else {
            return;
        };
        let Ok(gw_addr) = gw.local_addr() else { return };
        let mut out = Vec::new();
        handle_sip(&c, SUBSCRIBE.as_bytes(), &Route::Udp(gw_addr), &mut out);
        assert_eq!(
            c.dialogs.lock().map(|t| t.awaiting.clone()).ok(),
            Some(vec![0])
        );
        c.retransmit_initial(); // not due yet: kept
        assert_eq!(
            c.dialogs.lock().map(|t| t.awaiting.clone()).ok(),
            Some(vec![0])
        );
        c.initial_answered("c7@gw");
        c.retransmit_initial();
        assert_eq!(
            c.dialogs.lock().map(|t| t.awaiting.clone()).ok(),
            Some(vec![])
        );
        assert_eq!(c.shared.get(C::notify_retransmissions), 0);
        assert_eq!(c.shared.get(C::sip_tx), 2); // the 200 and the NOTIFY
    }

    /// While a cork is open for a TCP connection, this thread's messages to it are held and
    /// written together, in order, at the flush; each still counts as one message sent.
    #[test]
    fn corked_tcp_messages_leave_in_one_write_at_the_flush() {
        let Some(c) = ctx() else { return };
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        let Ok(client) = TcpStream::connect(addr) else {
            return;
        };
        let Ok((mut server, _)) = listener.accept() else {
            return;
        };
        let Ok(conn) = TcpConn::new(client) else {
            return;
        };
        let conn = Arc::new(conn);
        let route = Route::Tcp(conn.clone());
        let _ = server.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 64];
        {
            let cork = Cork::open(&c, conn.clone());
            c.send_sip(b"200 ", &route);
            c.send_sip(b"NOTIFY", &route);
            assert_eq!(c.shared.get(C::sip_tx), 0);
            server.set_nonblocking(true).ok();
            assert!(
                server.read(&mut buf).is_err(),
                "nothing written before the flush"
            );
            server.set_nonblocking(false).ok();
            cork.flush();
            assert_eq!(c.shared.get(C::sip_tx), 2);
            let n = server.read(&mut buf).unwrap_or(0);
            assert_eq!(buf.get(..n), Some(&b"200 NOTIFY"[..]));
        }
        // Closed: written at once again.
        c.send_sip(b"ACK", &route);
        assert_eq!(c.shared.get(C::sip_tx), 3);
        let n = server.read(&mut buf).unwrap_or(0);
        assert_eq!(buf.get(..n), Some(&b"ACK"[..]));
    }

    /// `Ctx::write_notify` as it was written with `write!`: the reference for the
    /// piece-by-piece writer.
    fn formatted_notify(
        ctx: &Ctx,
        out: &mut Vec<u8>,
        d: &mut Dialog,
        branch: &str,
        state: &str,
        note: &str,
        activity: u64,
    ) {
        d.cseq += 1;
        let mut body = String::with_capacity(512);
        body.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"");
        xmpp::escape(&mut body, &d.local_uri);
        body.push_str("\"><tuple id=\"t1\"><status><basic>open</basic></status><note>");
        xmpp::escape(&mut body, note);
        body.push_str("</note></tuple>");
        body.push_str(PERSONS.get((activity % 3) as usize).copied().unwrap_or(""));
        body.push_str(BODY_END);
        let remaining = d
            .expires_at
            .saturating_duration_since(Instant::now())
            .as_secs();
        let user = sip::user_of(&d.local_uri).unwrap_or("ps");
        let mut s = String::with_capacity(512 + body.len());
        let _ = write!(
            s,
            "NOTIFY {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\n\
From: <{}>;tag={}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} NOTIFY\r\nContact: <sip:{}@{}>\r\n\
Event: presence\r\n",
            d.target,
            d.dest.proto(),
            ctx.args.sip_listen,
            branch,
            d.local_uri,
            d.our_tag,
            d.remote,
            d.call_id,
            d.cseq,
            user,
            ctx.args.sip_listen
        );
        if state == "active" {
            let _ = write!(s, "Subscription-State: active;expires={remaining}\r\n");
        } else {
            let _ = write!(s, "Subscription-State: {state}\r\n");
        }
        let _ = write!(
            s,
            "Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            body
        );
        out.clear();
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn written_notify_equals_the_formatted_one() {
        let Some(c) = ctx() else { return };
        let mut odd = dialog();
        odd.local_uri = "sip:p&<'\"é>@sip.bench".into();
        odd.call_id = "c9@gw".into();
        let mut bare = dialog();
        bare.local_uri = "tel:+1".into();
        for base in [dialog(), odd, bare] {
            for (branch, state, note, activity) in [
                ("i0.r1", "active", "init", 0u64),
                ("r3.4", "active", "refresh", 1),
                ("r3.5", "terminated;reason=timeout", "bye", 2),
                ("n7.r1", "active", "n7 & <more> 'q' \"x\" ü", 7),
            ] {
                let (mut d1, mut d2) = (clone_dialog(&base), clone_dialog(&base));
                let (mut new, mut old) = (b"stale".to_vec(), Vec::new());
                c.write_notify(&mut new, &mut d1, branch, state, note, activity);
                formatted_notify(&c, &mut old, &mut d2, branch, state, note, activity);
                assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));
                assert_eq!(d1.cseq, d2.cseq);
            }
        }
    }

    fn clone_dialog(d: &Dialog) -> Dialog {
        Dialog {
            call_id: d.call_id.clone(),
            our_tag: d.our_tag.clone(),
            local_uri: d.local_uri.clone(),
            remote: d.remote.clone(),
            target: d.target.clone(),
            dest: d.dest.clone(),
            cseq: d.cseq,
            expires_at: d.expires_at,
            alive: d.alive,
            initial: None,
            tmpl: None,
        }
    }

    #[test]
    fn subscribe_stanza_equals_the_formatted_one() {
        let Some(mut c) = ctx() else { return };
        for component in ["sip.bench.local", "a'b&c"] {
            c.args.component = component.into();
            c.suffixes = Suffixes::of(&c.args);
            let mut out = b"<x/>".to_vec();
            for i in [0usize, 9, 12345] {
                c.write_a_subscribe(&mut out, i);
            }
            let mut want = String::from("<x/>");
            for i in [0usize, 9, 12345] {
                let a = &c.args;
                want.push_str("<presence type='subscribe' from='w");
                want.push_str(&format!("{i}@{}' to='", a.xmpp_domain));
                let jid = format!("p{i}{}{}@{}", a.separator, a.sip_domain, a.component);
                xmpp::escape(&mut want, &jid);
                want.push_str("'/>");
            }
            assert_eq!(String::from_utf8_lossy(&out), want);
        }
    }

    /// The 200 to an initial SUBSCRIBE and the initial NOTIFY, as the gateway receives them.
    #[test]
    fn subscribe_answer_wire_format() {
        let Some(c) = ctx() else { return };
        let Ok(gw) = UdpSocket::bind("127.0.0.1:0") else {
            return;
        };
        let _ = gw.set_read_timeout(Some(Duration::from_secs(2)));
        let Ok(gw_addr) = gw.local_addr() else { return };
        let mut out = Vec::new();
        handle_sip(&c, SUBSCRIBE.as_bytes(), &Route::Udp(gw_addr), &mut out);
        let mut buf = [0u8; 4096];
        let n = gw.recv(&mut buf).unwrap_or(0);
        assert_eq!(
            String::from_utf8_lossy(buf.get(..n).unwrap_or_default()),
            "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15080;branch=z9hG4bK-1;rport\r\n\
From: <sip:w7*xmpp.bench@gw.bench.local>;tag=gw-1\r\n\
To: <sip:p7@sip.bench>;tag=ps0.r1\r\n\
Call-ID: c7@gw\r\n\
CSeq: 1 SUBSCRIBE\r\n\
Contact: <sip:p7@127.0.0.1:15060>\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n"
        );
        let n = gw.recv(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        assert!(
            text.starts_with(
                "NOTIFY sip:w7*xmpp.bench@127.0.0.1:15080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bKi0.r1\r\n"
            ),
            "{text}"
        );
    }

    /// IM XMPP -> SIP: the chat stanza the component sends, to the byte; the body is
    /// `n<seq> ` + filler, `--body-bytes` long.
    #[test]
    fn im_stanza_wire_format() {
        let Some(mut c) = ctx() else { return };
        c.args.body_bytes = 12;
        c.suffixes = Suffixes::of(&c.args);
        let mut out = b"<x/>".to_vec();
        c.write_im_stanza(&mut out, 7, 42);
        c.write_im_stanza(&mut out, 0, 1_234_567_890_123);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<x/><message type='chat' from='u7@xmpp.bench/r' to='s7*sip.bench@sip.bench.local' id='x42'><body>n42 xxxxxxxx</body></message>\
<message type='chat' from='u0@xmpp.bench/r' to='s0*sip.bench@sip.bench.local' id='x1234567890123'><body>n1234567890123</body></message>"
        );
        assert_eq!(c.im_body_len(42), 12);
        assert_eq!(c.im_body_len(1_234_567_890_123), 14);
        // Our own reader finds the number again, as in a stanza from the gateway.
        let el = b"<message from='s7*sip.bench@sip.bench.local' to='u7@xmpp.bench' type='chat' id='sipm-1'><body>n42 xxxxxxxx</body><thread>m42.r1@bench</thread></message>";
        assert_eq!(
            xmpp::body_raw(el).and_then(|b| seq_prefix(b, b'n')),
            Some(42)
        );
    }

    /// IM SIP -> XMPP: the MESSAGE we send the gateway, to the byte, and our Call-ID read
    /// back from a response.
    #[test]
    fn im_message_wire_format() {
        let Some(c) = ctx() else { return };
        let mut out = b"stale".to_vec();
        c.write_im_message(&mut out, 3, 99, "UDP");
        let body = format!("n99 {}", "x".repeat(96));
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!(
                "MESSAGE sip:u3*xmpp.bench@gw.bench.local SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bKm99.r1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:s3@sip.bench>;tag=s3.r1\r\n\
To: <sip:u3*xmpp.bench@gw.bench.local>\r\n\
Call-ID: m99.r1@bench\r\n\
CSeq: 1 MESSAGE\r\n\
Content-Type: text/plain;charset=UTF-8\r\n\
Content-Length: 100\r\n\r\n{body}"
            )
        );
        let Some(m) = sip::parse(&out) else {
            panic!("unparseable MESSAGE")
        };
        assert_eq!(m.body.len(), 100);
        assert_eq!(c.im_seq(m.get("call-id")), Some(99));
        assert_eq!(c.im_seq(Some("m99.r2@bench")), None, "another run");
        assert_eq!(c.im_seq(Some("b9.r1@bench")), None);
        assert_eq!(c.im_seq(Some("m.r1@bench")), None);
        assert_eq!(c.im_seq(Some("m9x.r1@bench")), None);
        let mut tcp = Vec::new();
        c.write_im_message(&mut tcp, 3, 99, "TCP");
        assert!(String::from_utf8_lossy(&tcp).contains("Via: SIP/2.0/TCP 127.0.0.1:15060;"));
    }

    /// IM XMPP -> SIP at our SIP side: the gateway's MESSAGE gets the exact 200 at once and
    /// its body's number counts as delivered; the final response to one of our MESSAGEs
    /// is recorded once; an error stanza marks our stanza failed.
    #[test]
    fn im_message_from_the_gateway_is_answered_200_and_counted() {
        let Some(c) = ctx() else { return };
        let Ok(gw) = UdpSocket::bind("127.0.0.1:0") else {
            return;
        };
        let _ = gw.set_read_timeout(Some(Duration::from_secs(2)));
        let Ok(gw_addr) = gw.local_addr() else { return };
        assert!(c.shared.mark_sent(5));
        let msg = "MESSAGE sip:s5@sip.bench SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15080;branch=z9hG4bK-g1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:u5*xmpp.bench@gw.bench.local>;tag=im-1\r\n\
To: <sip:s5@sip.bench>\r\n\
Call-ID: 4d2@127.0.0.1\r\n\
CSeq: 7 MESSAGE\r\n\
Content-Type: text/plain;charset=UTF-8\r\n\
Content-Length: 8\r\n\r\nn5 xxxxx";
        let mut out = Vec::new();
        handle_sip(&c, msg.as_bytes(), &Route::Udp(gw_addr), &mut out);
        let mut buf = [0u8; 2048];
        let n = gw.recv(&mut buf).unwrap_or(0);
        assert_eq!(
            String::from_utf8_lossy(buf.get(..n).unwrap_or_default()),
            "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15080;branch=z9hG4bK-g1;rport\r\n\
From: <sip:u5*xmpp.bench@gw.bench.local>;tag=im-1\r\n\
To: <sip:s5@sip.bench>;tag=im-bench\r\n\
Call-ID: 4d2@127.0.0.1\r\n\
CSeq: 7 MESSAGE\r\n\
Content-Length: 0\r\n\r\n"
        );
        assert_eq!(c.shared.get(C::message_rx), 1);
        assert_ne!(c.shared.lat_us[5].load(Ordering::Relaxed), 0);
        // The gateway's 202 to our MESSAGE 5, then a stray second answer.
        let resp = "SIP/2.0 202 Accepted\r\nVia: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bKm5.r1;rport\r\n\
From: <sip:s5@sip.bench>;tag=s5.r1\r\nTo: <sip:u5*xmpp.bench@gw.bench.local>;tag=g\r\n\
Call-ID: m5.r1@bench\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        handle_sip(&c, resp.as_bytes(), &Route::Udp(gw_addr), &mut out);
        handle_sip(&c, resp.as_bytes(), &Route::Udp(gw_addr), &mut out);
        assert_eq!(c.shared.get(C::response_2xx_to_message), 1);
        assert_eq!(c.shared.resp_code[5].load(Ordering::Relaxed), 202);
        assert_ne!(c.shared.resp_us[5].load(Ordering::Relaxed), 0);
        // Stanzas from the gateway: a delivery (a duplicate of 5 here) and an error.
        on_message_stanza(&c.shared, b"<message from='s5*sip.bench@sip.bench.local' to='u5@xmpp.bench' type='chat' id='sipm-2'><body>n5 xxxxx</body></message>");
        assert_eq!(c.shared.get(C::update_duplicate), 1);
        on_message_stanza(&c.shared, b"<message from='s6*sip.bench@sip.bench.local' to='u6@xmpp.bench/r' type='error' id='x6'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>");
        assert_eq!(c.shared.get(C::stanza_message_error_rx), 1);
        assert_eq!(c.shared.resp_code[6].load(Ordering::Relaxed), 1);
        assert_eq!(
            c.shared
                .error_conditions
                .lock()
                .map(|m| m.get("item-not-found").copied())
                .ok(),
            Some(Some(1))
        );
    }

    /// The TCP reader keeps a partial message across reads, skips keepalive CRLFs, and
    /// answers every whole message once.
    #[test]
    fn tcp_reader_joins_a_message_split_across_reads() {
        let Some(c) = ctx() else { return };
        let c = Arc::new(c);
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        let Ok(mut client) = TcpStream::connect(addr) else {
            return;
        };
        let Ok((server, _)) = listener.accept() else {
            return;
        };
        let _ = server.set_read_timeout(Some(Duration::from_millis(50)));
        let Ok(conn) = server.try_clone().and_then(TcpConn::new) else {
            return;
        };
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || sip_tcp_read_loop(&c, Arc::new(conn), server))
        };
        let sub = SUBSCRIBE.as_bytes();
        let (a, b) = sub.split_at(sub.len() / 2);
        let options =
            "OPTIONS sip:p7@sip.bench SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK-o\r\n\
Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let _ = client.write_all(a);
        std::thread::sleep(Duration::from_millis(100));
        let _ = client.write_all(b);
        let _ = client.write_all(b"\r\n\r\n");
        let _ = client.write_all(options.as_bytes());
        let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.windows(9).filter(|w| w == b"CSeq: 1 O").count() < 1 && Instant::now() < deadline
        {
            if let Ok(n) = client.read(&mut buf) {
                got.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
        }
        c.shared.stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        let text = String::from_utf8_lossy(&got);
        assert_eq!(c.shared.get(C::sip_rx), 2, "{text}");
        assert_eq!(c.shared.get(C::sip_tcp_rx), 2);
        assert_eq!(c.shared.get(C::subscribe_rx), 1);
        assert_eq!(c.shared.get(C::other_request_rx), 1);
        assert_eq!(c.shared.get(C::sip_tx), 3);
        assert_eq!(text.matches("SIP/2.0 200 OK\r\n").count(), 2, "{text}");
        assert_eq!(text.matches("NOTIFY sip:").count(), 1, "{text}");
    }

    #[test]
    fn tls_listener_answers_over_tls_with_a_tls_via() {
        let Some(c) = ctx() else { return };
        let c = Arc::new(c);
        let dir = std::env::temp_dir().join(format!("bench-tls-peer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        assert_eq!(crate::tls::ensure(&dir, &[ip]), Ok(true));
        let cfg = crate::tls::server_config(&dir).expect("server config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || sip_tcp_start(&c, server, Some(cfg)))
        };
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let session = rustls::ClientConnection::new(crate::tls::tests::client_config(&dir), name)
            .expect("client");
        let mut client = rustls::StreamOwned::new(session, tcp);
        let _ = client
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)));
        // Split across two records, as the framing must join them.
        let sub = SUBSCRIBE.as_bytes();
        let (a, b) = sub.split_at(sub.len() / 2);
        client.write_all(a).expect("write");
        client.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(50));
        client.write_all(b).expect("write");
        client.flush().expect("flush");
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(5);
        while !got.windows(7).any(|w| w == b"NOTIFY ") && Instant::now() < deadline {
            if let Ok(n) = client.read(&mut buf) {
                got.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
        }
        // The rest of the NOTIFY, if it came in another record.
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(n) = client.read(&mut buf) {
            got.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        c.shared.stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&got);
        assert_eq!(c.shared.get(C::subscribe_rx), 1, "{text}");
        assert_eq!(c.shared.get(C::sip_tcp_rx), 1);
        assert_eq!(c.shared.get(C::sip_tls_rx), 1);
        assert_eq!(c.shared.get(C::sip_tls_sessions), 1);
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
        assert_eq!(text.matches("NOTIFY sip:").count(), 1, "{text}");
        assert!(text.contains("\r\nVia: SIP/2.0/TLS "), "{text}");
    }
}
