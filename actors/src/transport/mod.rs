//! The SIP transport actor: UDP, TCP and TLS sockets (RFC 3261 §18, §26) and non-INVITE client and
//! server transactions (§17.1.2, §17.2.2). It owns branches, retransmissions and timers so
//! the gateway only sees new requests and final responses.
//!
//! The actor itself does no socket I/O and no parsing: UDP datagrams are received, parsed
//! and sent by two threads (`udp`), TCP connections are served by one I/O thread (`io`);
//! parsed messages arrive in batches, and the actor matches transactions and dispatches.
//!
//! Timers are driven by one periodic tick, not a task per transaction: fixed-duration timers
//! (F, J, the server-side TU deadline) sit in FIFO queues because their deadlines arrive in
//! order; only Timer E, whose interval doubles, needs a heap.

mod io;
pub mod tls;
mod txn;
mod udp;

use crate::idhash::IdMap;
use actix::prelude::*;
use pua_xmpp::sip::encode::{encode_request, encode_response, uri_host_port, via_branch};
use pua_xmpp::sip::{Destination, Method, OutRequest, OutResponse, SipResponse};
use std::collections::HashMap;
use std::net::UdpSocket;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::messages::{
    SendRequest, SendResponse, SetTargets, SipRequestIn, Source, TargetOutcome, TargetReport,
    TransactionOutcome, Transport, TxnResult,
};
use io::Batch;
use io::{InRequest, Incoming};
pub use txn::BranchGen;
use txn::{is_plain, ClientTxn, CompletedTxn, Found, KeyHasher, ServerTxns, Timers};
use udp::{Datagram, UdpSender};

/// Settings of the SIP transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Address to bind UDP and TCP on (same port). Also the sent-by of our `Via`, so it should
    /// be a concrete address rather than `0.0.0.0`.
    pub listen: SocketAddr,
    /// The resolved `sip.server_address`: where out-of-dialog requests go.
    pub outbound_proxy: Option<SocketAddr>,
    /// The host of `sip.server_address`: the name its TLS certificate must carry.
    pub outbound_proxy_name: Option<String>,
    /// SIP over TLS: the listener and the verification of peers. `None`: no TLS at all.
    pub tls: Option<tls::TlsSettings>,
    /// Transport for requests we originate, unless a URI says `;transport=`.
    pub request_transport: Transport,
    pub max_message: usize,
    /// RTT estimate: Timer E starts at T1; Timers F and J are 64*T1.
    pub t1: Duration,
    /// Cap of the retransmission interval.
    pub t2: Duration,
    /// Timer K. Kept for completeness: a client transaction is removed at its final response,
    /// so late retransmitted finals are dropped without holding state for T4.
    pub t4: Duration,
}

impl TransportConfig {
    /// RFC 3261 default timers (T1 500 ms, T2 4 s, T4 5 s) on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        TransportConfig {
            listen,
            outbound_proxy: None,
            outbound_proxy_name: None,
            tls: None,
            request_transport: Transport::Udp,
            max_message: pua_xmpp::sip::framing::DEFAULT_MAX_MESSAGE,
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The `413 Request Entity Too Large` for an oversize message (RFC 3261 §21.4.11), built from
/// its header section alone: the body, possibly cut short by the receive buffer, is never
/// read. `None` when the head does not parse, or for a response or an ACK (never answered).
pub(crate) fn too_large_answer(data: &[u8]) -> Option<pua_xmpp::sip::OutResponse> {
    let lead = data
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let data = data.get(lead..)?;
    // The header section ends at the first empty line (CRLF CRLF, or bare LFs).
    let end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 1)
        .into_iter()
        .chain(data.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 1))
        .min()?;
    let head = std::str::from_utf8(data.get(..end)?).ok()?;
    // The head with Content-Length 0, so the parser sees a complete body-less message.
    let mut text = String::with_capacity(head.len() + 24);
    for line in head.lines() {
        let name = line.split_once(':').map(|(n, _)| n.trim());
        if name.is_some_and(|n| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("l")
        }) {
            continue;
        }
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    match pua_xmpp::sip::parse::parse_message(text.as_bytes()) {
        Ok(pua_xmpp::sip::SipMessage::Request(req)) if req.method != Method::Ack => {
            Some(pua_xmpp::sip::OutResponse::to_request(&req, 413, None))
        }
        _ => None,
    }
}

/// Queue length (messages) of one TCP connection's writer; beyond it sends fail rather than
/// buffer without bound. About a second of a subscription burst on the proxy connection
/// (30,000 set-ups/s = 60,000 messages/s out): at 1024 a burst of a few hundred set-ups
/// while the I/O thread waited for a core failed SUBSCRIBEs with "congested" (measured:
/// 54 failed, 22 pairs never set up, in 100,000 set-ups with 1000 in flight). The queue
/// holds no memory while empty (tokio allocates its blocks as they fill).
const TCP_QUEUE: usize = 32 * 1024;

/// Batches of parsed TCP messages queued for the actor (all connections); when full, the
/// connections stop reading and TCP flow control slows the peers.
const TCP_BATCHES: usize = 64;

/// One TCP or TLS connection, accepted or opened by us.
struct Conn {
    peer: SocketAddr,
    transport: Transport,
    tx: mpsc::Sender<Vec<u8>>,
    /// What `TcpStream::nodelay()` reported after we set it (false while connecting).
    nodelay: bool,
    outbound: bool,
}

/// The SIP transport actor. Start it with [`SipTransport::bind`].
pub struct SipTransport {
    cfg: TransportConfig,
    local: SocketAddr,
    /// `local` as text, for the Via of every request we send.
    local_text: String,
    /// The UDP socket, shared with the reader and sender threads.
    udp: Arc<UdpSocket>,
    udp_tx: UdpSender,
    keys: KeyHasher,
    listener: Option<TcpListener>,
    /// The TLS listener until `started` adds it as a stream, and its bound address.
    tls_listener: Option<TcpListener>,
    tls_local: Option<SocketAddr>,
    /// The sent-by of TLS requests: the TLS listener's address (else `local_text`).
    tls_local_text: String,
    /// Handshakes of accepted TLS connections (replaced on SIGHUP by [`ReloadTls`]).
    tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    tls_connector: Option<tokio_rustls::TlsConnector>,
    inbound: Recipient<SipRequestIn>,
    inbound_batches: Option<Recipient<crate::messages::SipRequestsIn>>,
    /// New requests of the batch being handled, sent by [`SipTransport::flush_inbound`].
    pending_in: Vec<SipRequestIn>,
    server: ServerTxns,
    clients: IdMap<u64, ClientTxn>,
    timers: Timers,
    branches: BranchGen,
    next_client: u64,
    conns: IdMap<u64, Conn>,
    /// Reusable connection per peer address and transport (outbound ones, and inbound ones by
    /// source).
    conn_by_peer: HashMap<(SocketAddr, Transport), u64>,
    next_conn: u64,
    /// One thread for the I/O of every TCP connection: reading, framing and parsing happen
    /// off the actor's thread, as for UDP.
    tcp_io: actix_rt::Arbiter,
    tcp_in: mpsc::Sender<Batch>,
    /// The receiving end of `tcp_in`, until `started` adds it as a stream.
    tcp_in_rx: Option<mpsc::Receiver<Batch>>,
    counters: Counters,
    /// Where requests are encoded before being copied out at their exact size: a 1 KiB
    /// buffer per request is a large-bin request for glibc's malloc, which then consolidates
    /// its fast bins every time (measured: a few % of the gateway's CPU during set-up).
    scratch: Vec<u8>,
    /// RFC 3263 targets of out-of-dialog requests, in order ([`SetTargets`]); empty: use
    /// `cfg.outbound_proxy`.
    proxy_targets: Vec<(SocketAddr, Transport)>,
    /// Where per-target failures go (the locator).
    target_reports: Option<Recipient<TargetReport>>,
    /// Out-of-dialog requests in flight while there is a target to fail over to, by client id.
    failovers: IdMap<u64, Failover>,
    /// Ourselves, for [`Resend`] from the failure paths (weak: must not keep the actor alive).
    me: Option<actix::WeakAddr<SipTransport>>,
}

/// An out-of-dialog request kept while its transaction runs, to be sent again as a new
/// transaction (new branch) to the next target if this one times out or refuses
/// (RFC 3263 §4.3).
struct Failover {
    req: OutRequest,
    key: u64,
    reply_to: Recipient<TransactionOutcome>,
    transport: Option<Transport>,
    tried: Vec<SocketAddr>,
}

/// Sends a failed-over request to the given address over the given transport (sent to
/// ourselves: the failure paths have no context to start a transaction with).
#[derive(Message)]
#[rtype(result = "()")]
struct Resend(Box<Failover>, SocketAddr, Transport);

impl Handler<Resend> for SipTransport {
    type Result = ();
    fn handle(&mut self, Resend(f, addr, transport): Resend, ctx: &mut Context<Self>) {
        let mut f = *f;
        f.tried.push(addr);
        let msg = SendRequest {
            req: f.req.clone(),
            key: f.key,
            reply_to: f.reply_to.clone(),
            transport: f.transport,
        };
        let transport = chosen_transport(f.transport, transport);
        // `start_client` takes the next client id.
        self.failovers.insert(self.next_client, f);
        let name = self.cfg.outbound_proxy_name.clone();
        self.start_client(msg, addr, transport, name.as_deref(), ctx);
    }
}

impl Handler<SetTargets> for SipTransport {
    type Result = ();
    fn handle(&mut self, msg: SetTargets, _: &mut Context<Self>) {
        self.proxy_targets = msg.targets;
        self.target_reports = msg.report_to;
    }
}

impl SipTransport {
    /// Tells the locator how a request to `addr` went, if `addr` is one of its targets. An
    /// answer is only worth reporting from a target that is not first (it may be back).
    fn report_target(&self, addr: SocketAddr, outcome: TargetOutcome) {
        let Some(to) = &self.target_reports else {
            return;
        };
        let known = match outcome {
            TargetOutcome::Answered => {
                self.proxy_targets.first().is_some_and(|f| f.0 != addr)
                    && self.proxy_targets.iter().any(|t| t.0 == addr)
            }
            _ => self.proxy_targets.iter().any(|t| t.0 == addr),
        };
        if known {
            to.do_send(TargetReport { addr, outcome });
        }
    }

    /// Client transaction `id` failed at `t.target`: reported, then sent again to the next
    /// untried target if it was out of dialog (RFC 3263 §4.3); else the TU hears of it.
    fn client_failed(&mut self, id: u64, t: ClientTxn, result: TxnResult, outcome: TargetOutcome) {
        self.report_target(t.target, outcome);
        if let Some(f) = self.failovers.remove(&id) {
            let next = self
                .proxy_targets
                .iter()
                .find(|(a, _)| !f.tried.contains(a))
                .copied();
            let me = self.me.as_ref().and_then(|m| m.upgrade());
            if let (Some((addr, transport)), Some(me)) = (next, me) {
                warn!(failed = %t.target, ?outcome, next = %addr, "out-of-dialog request failed; sending it again to the next server (RFC 3263 §4.3)");
                me.do_send(Resend(Box::new(f), addr, transport));
                return;
            }
        }
        t.finish(result);
    }
}

/// Closes a connection that could not be set up (sent to ourselves).
#[derive(Message)]
#[rtype(result = "()")]
struct CloseConn(u64);

impl Handler<CloseConn> for SipTransport {
    type Result = ();
    fn handle(&mut self, msg: CloseConn, _: &mut Context<Self>) {
        self.drop_conn(msg.0);
    }
}

/// Counter handles by label value, made on first use: `counter!` with an owned label would
/// allocate and look its key up in the registry for every message.
struct Labelled<K> {
    handles: Vec<(K, metrics::Counter)>,
}

impl<K: PartialEq + Clone> Labelled<K> {
    /// Distinct label values kept (methods and status codes are few; beyond, no caching).
    const MAX: usize = 64;

    fn inc(&mut self, label: &K, make: impl FnOnce(&K) -> metrics::Counter) {
        if let Some((_, c)) = self.handles.iter().find(|(k, _)| k == label) {
            c.increment(1);
            return;
        }
        let c = make(label);
        c.increment(1);
        if self.handles.len() < Self::MAX {
            self.handles.push((label.clone(), c));
        }
    }
}

impl<K> Default for Labelled<K> {
    fn default() -> Self {
        Labelled {
            handles: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Counters {
    requests_in: Labelled<Method>,
    responses_in: Labelled<u16>,
    requests_out: Labelled<Method>,
    responses_out: Labelled<u16>,
}

impl SipTransport {
    /// Binds UDP and TCP on `cfg.listen` (with port 0: the same free port for both) and starts
    /// the actor. New inbound requests go to `inbound`.
    pub async fn bind(
        cfg: TransportConfig,
        inbound: Recipient<SipRequestIn>,
    ) -> std::io::Result<Addr<SipTransport>> {
        Self::bind_batched(cfg, inbound, None).await
    }

    /// [`SipTransport::bind`], with the requests of one read (a batch of datagrams, one TCP
    /// read) handed over as one [`SipRequestsIn`] to `batches`: the registry and the shards
    /// then cross threads once per batch, not once per request.
    pub async fn bind_batched(
        cfg: TransportConfig,
        inbound: Recipient<SipRequestIn>,
        batches: Option<Recipient<crate::messages::SipRequestsIn>>,
    ) -> std::io::Result<Addr<SipTransport>> {
        let (udp, listener) = bind_pair(cfg.listen).await?;
        let local = udp.local_addr()?;
        let (tls_listener, tls_local) = match cfg.tls.as_ref().and_then(|t| t.listen) {
            Some(at) => {
                let l = TcpListener::bind(at).await?;
                let a = l.local_addr()?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let tls_acceptor = cfg
            .tls
            .as_ref()
            .and_then(|t| t.server.clone())
            .map(tokio_rustls::TlsAcceptor::from);
        if tls_listener.is_some() && tls_acceptor.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a TLS listener needs a certificate and key",
            ));
        }
        let tls_connector = cfg
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsConnector::from(t.client.clone()));
        let udp = Arc::new(udp);
        let udp_tx = UdpSender::spawn(udp.clone())?;
        let (tcp_in, tcp_in_rx) = mpsc::channel(TCP_BATCHES);
        let actor = SipTransport {
            local,
            local_text: pua_xmpp::sip::encode::hostport(local),
            udp,
            udp_tx,
            keys: KeyHasher::new(),
            listener: Some(listener),
            tls_listener,
            tls_local,
            tls_local_text: pua_xmpp::sip::encode::hostport(tls_local.unwrap_or(local)),
            tls_acceptor,
            tls_connector,
            inbound,
            inbound_batches: batches,
            pending_in: Vec::new(),
            server: ServerTxns::default(),
            clients: IdMap::default(),
            timers: Timers::default(),
            branches: BranchGen::new(),
            next_client: 1,
            conns: IdMap::default(),
            conn_by_peer: HashMap::new(),
            next_conn: 1,
            tcp_io: actix_rt::Arbiter::new(),
            tcp_in,
            tcp_in_rx: Some(tcp_in_rx),
            counters: Counters::default(),
            scratch: Vec::with_capacity(2048),
            proxy_targets: Vec::new(),
            target_reports: None,
            failovers: IdMap::default(),
            me: None,
            cfg,
        };
        Ok(actor.start())
    }

    /// The bound address (UDP and TCP share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The bound address of the TLS listener, if any.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local
    }

    fn tick_interval(&self) -> Duration {
        (self.cfg.t1 / 4).clamp(Duration::from_millis(1), Duration::from_millis(50))
    }

    fn timer_f(&self) -> Duration {
        self.cfg.t1 * 64
    }

    // ---- sending -------------------------------------------------------------------------

    /// Sends bytes on UDP from our listening socket, through the sender thread. Never waits:
    /// a full socket buffer drops the datagram (retransmissions cover it).
    fn send_udp(&self, bytes: Vec<u8>, to: SocketAddr) -> Result<(), String> {
        self.udp_tx.send(Datagram::Bytes(bytes), to)
    }

    fn send_conn(&mut self, conn_id: u64, bytes: Vec<u8>) -> Result<(), String> {
        let Some(conn) = self.conns.get(&conn_id) else {
            return Err(format!("connection {conn_id} is closed"));
        };
        let proto = conn.transport.via_token();
        match conn.tx.try_send(bytes) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(format!("{proto} connection to {} is congested", conn.peer))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                let peer = conn.peer;
                self.drop_conn(conn_id);
                Err(format!("{proto} connection to {peer} is closed"))
            }
        }
    }

    /// Sends a datagram (UDP) or its encoding (TCP) to where `source` came from.
    fn send_datagram(&mut self, datagram: Datagram, source: &Source) -> Result<(), String> {
        match (source.transport, source.conn_id) {
            (Transport::Tcp | Transport::Tls, Some(id)) => {
                self.send_conn(id, datagram.into_bytes())
            }
            _ => self.udp_tx.send(datagram, source.peer),
        }
    }

    fn send_to_source(&mut self, bytes: Vec<u8>, source: &Source) -> Result<(), String> {
        match (source.transport, source.conn_id) {
            (Transport::Tcp | Transport::Tls, Some(id)) => self.send_conn(id, bytes),
            _ => self.send_udp(bytes, source.peer),
        }
    }

    // ---- TCP connections -----------------------------------------------------------------

    fn register_stream(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        conn_id: u64,
        tls: Option<io::TlsRole>,
        ctx: &mut Context<Self>,
    ) {
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let nodelay = self.start_tcp_io(stream, peer, conn_id, rx, tls, ctx);
        self.conns.insert(
            conn_id,
            Conn {
                peer,
                transport,
                tx,
                nodelay,
                outbound: false,
            },
        );
        metrics::counter!("pua_xmpp_sip_connections_total", "transport" => transport.label(), "direction" => "inbound").increment(1);
        self.conn_by_peer
            .entry((peer, transport))
            .or_insert(conn_id);
    }

    /// Sets TCP_NODELAY (returns it as read back) and moves the connection's reading
    /// (framing, parsing) and writing to the TCP I/O thread; parsed messages come back to the
    /// actor in batches.
    fn start_tcp_io(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        conn_id: u64,
        out: mpsc::Receiver<Vec<u8>>,
        tls: Option<io::TlsRole>,
        ctx: &mut Context<Self>,
    ) -> bool {
        if let Err(e) = stream.set_nodelay(true) {
            warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let nodelay = stream.nodelay().unwrap_or(false);
        let max_message = self.cfg.max_message;
        let keys = self.keys.clone();
        let moved = stream.into_std().map(|std| {
            let to_actor = self.tcp_in.clone();
            self.tcp_io.spawn(io::tcp_connection(
                std,
                io::ConnInfo {
                    conn: conn_id,
                    peer,
                    max_message,
                    keys: keys.clone(),
                    tls,
                },
                out,
                to_actor,
            ))
        });
        if !matches!(moved, Ok(true)) {
            // No I/O thread (stopped, or the socket could not move): the connection is lost.
            warn!(%peer, "cannot hand the TCP connection to its I/O thread; closing it");
            ctx.notify(CloseConn(conn_id));
        }
        nodelay
    }

    fn drop_conn(&mut self, conn_id: u64) {
        self.drop_conn_because(conn_id, "connection closed before a final response");
    }

    /// Closes a connection; the client transactions waiting on it fail with `reason`.
    fn drop_conn_because(&mut self, conn_id: u64, reason: &str) {
        if let Some(conn) = self.conns.remove(&conn_id) {
            let key = (conn.peer, conn.transport);
            if self.conn_by_peer.get(&key) == Some(&conn_id) {
                self.conn_by_peer.remove(&key);
            }
            debug!(peer = %conn.peer, conn_id, transport = conn.transport.label(), "connection closed");
        }
        let failed: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, t)| t.conn_id == Some(conn_id))
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(t) = self.clients.remove(&id) {
                let e = TxnResult::TransportError(reason.to_owned());
                self.client_failed(id, t, e, TargetOutcome::Refused);
            }
        }
    }

    /// The connection to `peer`, opening one when there is none (for TLS, verified against
    /// `tls_name`). Messages queue while it connects; a failed connect or handshake fails the
    /// transactions waiting on it.
    fn conn_to(
        &mut self,
        peer: SocketAddr,
        transport: Transport,
        tls_name: Option<&str>,
        ctx: &mut Context<Self>,
    ) -> Result<u64, String> {
        if let Some(id) = self.conn_by_peer.get(&(peer, transport)) {
            if self.conns.contains_key(id) {
                return Ok(*id);
            }
        }
        let tls = match transport {
            Transport::Tls => {
                let connector = self.tls_connector.clone().ok_or_else(|| {
                    format!("cannot reach {peer} over TLS: SIP over TLS is not configured")
                })?;
                let host = tls_name.map_or_else(|| peer.ip().to_string(), str::to_owned);
                let name = tls::server_name(&host)?;
                Some(io::TlsRole::Connect(connector, name))
            }
            _ => None,
        };
        let conn_id = self.next_conn;
        self.next_conn += 1;
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        self.conns.insert(
            conn_id,
            Conn {
                peer,
                transport,
                tx,
                nodelay: false,
                outbound: true,
            },
        );
        metrics::counter!("pua_xmpp_sip_connections_total", "transport" => transport.label(), "direction" => "outbound").increment(1);
        self.conn_by_peer.insert((peer, transport), conn_id);
        let fut = connect_from(self.local.ip(), peer).into_actor(self).map(
            move |res, act: &mut SipTransport, ctx| match res {
                Ok(stream) => {
                    if !act.conns.contains_key(&conn_id) {
                        return; // closed meanwhile
                    }
                    let nodelay = act.start_tcp_io(stream, peer, conn_id, rx, tls, ctx);
                    if let Some(c) = act.conns.get_mut(&conn_id) {
                        c.nodelay = nodelay;
                    }
                }
                Err(e) => {
                    warn!(%peer, error = %e, "TCP connect failed");
                    act.drop_conn_because(conn_id, &format!("TCP connect to {peer} failed: {e}"));
                }
            },
        );
        ctx.spawn(fut);
        Ok(conn_id)
    }

    // ---- inbound -------------------------------------------------------------------------

    fn on_request(&mut self, inreq: InRequest, source: Source) {
        let InRequest { req, key, fp, im } = inreq;
        if req.method == Method::Ack {
            debug!(peer = %source.peer, call_id = %req.call_id, "ACK without INVITE transaction dropped");
            return;
        }
        match self.server.find(&key) {
            // A retransmission before the gateway answered: absorbed (no 100 for non-INVITE).
            Some(Found::Trying) => return,
            // A retransmission after the final response: the same response again.
            Some(Found::Completed(done)) => {
                let replay = match &done.bytes {
                    Some(kept) => Datagram::Bytes(kept.to_vec()),
                    None => {
                        if done.fp != fp {
                            debug!(peer = %source.peer, call_id = %req.call_id, "retransmission differs from its request in Via/From/To/Call-ID/CSeq; answered from the retransmission");
                        }
                        let resp = OutResponse::to_request(&req, done.status, None);
                        Datagram::Response(Box::new(resp))
                    }
                };
                if let Err(e) = self.send_datagram(replay, &source) {
                    warn!(error = %e, "response replay failed");
                }
                return;
            }
            None => {}
        }
        let deadline = Instant::now() + self.timer_f();
        let id = self.server.insert(key, source.clone(), fp, deadline);
        self.timers.server.push_back((deadline, id));
        self.counters.requests_in.inc(&req.method, |m| {
            metrics::counter!("pua_xmpp_sip_requests_in_total", "method" => m.as_str().to_owned())
        });
        self.pending_in.push(SipRequestIn {
            req,
            source,
            txn: id,
            im,
        });
    }

    /// Hands the new requests of the batch just read to the registry: as one message when
    /// batches are wanted, else one by one.
    fn flush_inbound(&mut self) {
        if self.pending_in.is_empty() {
            return;
        }
        match &self.inbound_batches {
            Some(b) if self.pending_in.len() > 1 => {
                let batch = crate::batch::take_sized(&mut self.pending_in);
                b.do_send(crate::messages::SipRequestsIn(batch));
            }
            _ => {
                for r in self.pending_in.drain(..) {
                    self.inbound.do_send(r);
                }
            }
        }
    }

    fn on_response(&mut self, resp: SipResponse, source: &Source) {
        self.counters.responses_in.inc(
            &resp.status,
            |c| metrics::counter!("pua_xmpp_sip_responses_in_total", "code" => c.to_string()),
        );
        let id = resp
            .via
            .first()
            .and_then(|v| via_branch(v))
            .and_then(|b| self.branches.id_of(b));
        let Some(id) = id else {
            debug!(peer = %source.peer, status = resp.status, "response to no transaction of ours dropped");
            return;
        };
        let matches = self
            .clients
            .get(&id)
            .is_some_and(|t| t.method == resp.cseq_method);
        if !matches {
            debug!(peer = %source.peer, status = resp.status, "response for unknown or finished transaction dropped");
            return;
        }
        if resp.status < 200 {
            if let Some(t) = self.clients.get_mut(&id) {
                if t.retransmit.is_some() {
                    // Proceeding: keep retransmitting, at T2 (RFC 3261 §17.1.2.2).
                    let at = Instant::now() + self.cfg.t2;
                    t.interval = self.cfg.t2;
                    t.next_retx = Some(at);
                    self.timers.retx.push(std::cmp::Reverse((at, id)));
                }
            }
            return;
        }
        if let Some(t) = self.clients.remove(&id) {
            self.report_target(t.target, TargetOutcome::Answered);
            self.failovers.remove(&id);
            t.finish(TxnResult::Response(Box::new(resp)));
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Server transactions the TU never answered. Entries of answered ones are dropped as
        // they reach the front (nearly all are answered within milliseconds), so the queue
        // holds about the transactions in flight, not 64*T1 worth of traffic.
        while let Some(&(at, id)) = self.timers.server.front() {
            let live = self.server.trying(id).filter(|t| t.deadline == at);
            match live {
                Some(_) if at > now => break,
                Some(t) => {
                    warn!(peer = %t.source.peer, txn = id, "no response from the gateway within 64*T1; transaction dropped");
                    self.server.remove_trying(id);
                }
                None => {}
            }
            self.timers.server.pop_front();
        }
        release_spare(&mut self.timers.server);
        // Timer J.
        let now_ms = self.timers.ms(now);
        while let Some(&(at, key)) = self.timers.timer_j.front() {
            if !Timers::due(at, now_ms) {
                break;
            }
            self.timers.timer_j.pop_front();
            self.server.expire_completed(&key);
        }
        release_spare(&mut self.timers.timer_j);
        // Timer F; entries of finished transactions are dropped as they reach the front.
        while let Some(&(at, id)) = self.timers.client_f.front() {
            if self.clients.contains_key(&id) {
                if at > now {
                    break;
                }
                if let Some(t) = self.clients.remove(&id) {
                    self.client_failed(id, t, TxnResult::Timeout, TargetOutcome::Timeout);
                }
            }
            self.timers.client_f.pop_front();
        }
        release_spare(&mut self.timers.client_f);
        // Timer E.
        while let Some(std::cmp::Reverse((at, id))) = self.timers.retx.peek().copied() {
            if at > now {
                break;
            }
            self.timers.retx.pop();
            let t2 = self.cfg.t2;
            let Some(t) = self.clients.get_mut(&id) else {
                continue;
            };
            if t.next_retx != Some(at) {
                continue;
            }
            let Some(bytes) = t.retransmit.as_ref() else {
                continue;
            };
            if t.conn_id.is_some() {
                continue; // streams are reliable: no Timer E
            }
            if let Err(e) = self.udp_tx.send(Datagram::Bytes(bytes.to_vec()), t.target) {
                debug!(target = %t.target, error = %e, "retransmission failed");
            }
            t.interval = (t.interval * 2).min(t2);
            let next = now + t.interval;
            t.next_retx = Some(next);
            self.timers.retx.push(std::cmp::Reverse((next, id)));
        }
    }

    // ---- outbound requests ---------------------------------------------------------------

    /// Where a request goes: (host, port, transport).
    fn target_of(&self, req: &OutRequest) -> Result<(Target, Transport), String> {
        match req.destination {
            Destination::OutboundProxy => {
                let name = || self.cfg.outbound_proxy_name.clone();
                match (self.proxy_targets.first(), self.cfg.outbound_proxy) {
                    // Located targets (RFC 3263) keep the URI host as the TLS name (RFC 5922).
                    (Some(&(addr, transport)), _) => Ok((Target::Addr(addr, name()), transport)),
                    // Located by name (RFC 3263) and nothing found yet.
                    (None, _) if self.target_reports.is_some() => {
                        Err("sip.server_address: no target located (DNS)".to_owned())
                    }
                    (None, Some(addr)) => {
                        Ok((Target::Addr(addr, name()), self.cfg.request_transport))
                    }
                    (None, None) => {
                        Err("no outbound proxy configured (sip.server_address)".to_owned())
                    }
                }
            }
            Destination::InDialog => {
                let uri = match req.route.first() {
                    Some(route) => route.as_str(),
                    None => req.uri.as_str(),
                };
                let hp = uri_host_port(strip_brackets(uri))
                    .ok_or_else(|| format!("cannot route to {uri:?}: no host in the URI"))?;
                // A sips: URI or ;transport=tls means TLS (RFC 3261 §26.2, RFC 5630).
                let transport = match hp.transport.as_deref() {
                    _ if hp.sips => Transport::Tls,
                    Some("tls") => Transport::Tls,
                    Some("tcp") => Transport::Tcp,
                    Some("udp") => Transport::Udp,
                    _ => self.cfg.request_transport,
                };
                let default_port = if transport == Transport::Tls {
                    5061
                } else {
                    5060
                };
                let port = hp.port.unwrap_or(default_port);
                let host = hp.host.trim_start_matches('[').trim_end_matches(']');
                let target = match host.parse::<IpAddr>() {
                    Ok(ip) => Target::Addr(SocketAddr::new(ip, port), Some(host.to_owned())),
                    Err(_) => Target::Name(format!("{host}:{port}"), host.to_owned()),
                };
                Ok((target, transport))
            }
        }
    }

    fn start_client(
        &mut self,
        msg: SendRequest,
        target: SocketAddr,
        transport: Transport,
        tls_name: Option<&str>,
        ctx: &mut Context<Self>,
    ) {
        let id = self.next_client;
        self.next_client += 1;
        let sent_by = match transport {
            Transport::Tls => &self.tls_local_text,
            _ => &self.local_text,
        };
        let via = pua_xmpp::text::concat(&[
            "SIP/2.0/",
            transport.via_token(),
            " ",
            sent_by,
            ";branch=",
            &self.branches.branch(id),
            ";rport",
        ]);
        self.scratch.clear();
        encode_request(&msg.req, &via, &mut self.scratch);
        let bytes = self.scratch.to_vec();
        self.counters.requests_out.inc(&msg.req.method, |m| {
            metrics::counter!("pua_xmpp_sip_requests_out_total", "method" => m.as_str().to_owned())
        });
        let now = Instant::now();
        let mut t = ClientTxn {
            key: msg.key,
            reply_to: msg.reply_to,
            method: msg.req.method.clone(),
            target,
            conn_id: None,
            retransmit: None,
            interval: self.cfg.t1,
            next_retx: None,
        };
        let sent = match transport {
            Transport::Udp => {
                let r = self.send_udp(bytes.clone(), target);
                let at = now + self.cfg.t1;
                t.next_retx = Some(at);
                t.retransmit = Some(bytes.into_boxed_slice());
                self.timers.retx.push(std::cmp::Reverse((at, id)));
                r
            }
            Transport::Tcp | Transport::Tls => {
                match self.conn_to(target, transport, tls_name, ctx) {
                    Ok(conn) => {
                        t.conn_id = Some(conn);
                        self.send_conn(conn, bytes)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = sent {
            warn!(%target, error = %e, "request send failed");
            self.client_failed(id, t, TxnResult::TransportError(e), TargetOutcome::Refused);
            return;
        }
        self.clients.insert(id, t);
        self.timers.client_f.push_back((now + self.timer_f(), id));
    }
}

/// Opens a TCP connection to `peer` from our listening IP (any port), so that the peer sees
/// the address our Via and Contact name rather than whatever the routing table picks (on a
/// multi-address host, or another loopback address); a wildcard or other-family listen
/// address leaves the choice to the kernel.
async fn connect_from(local: IpAddr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    if local.is_unspecified() || local.is_ipv4() != peer.is_ipv4() {
        return TcpStream::connect(peer).await;
    }
    let sock = if peer.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(local, 0))?;
    sock.connect(peer).await
}

/// Gives back most of a timer queue's room once a burst has drained: a set-up burst of
/// 100,000 transactions must not pin megabytes for the life of the process.
fn release_spare<T>(q: &mut std::collections::VecDeque<T>) {
    if q.capacity() > 4096 && q.len() < q.capacity() / 8 {
        q.shrink_to(q.len() * 2);
    }
}

/// The transport of one request: the override asked for (a large MESSAGE asks for TCP) or the
/// route's. An override never downgrades TLS: a request that wants a reliable transport on a
/// TLS route stays on TLS.
fn chosen_transport(asked: Option<Transport>, route: Transport) -> Transport {
    match (asked, route) {
        (_, Transport::Tls) => Transport::Tls,
        (Some(t), _) => t,
        (None, r) => r,
    }
}

/// A request's next hop, with the host its TLS certificate must name.
enum Target {
    Addr(SocketAddr, Option<String>),
    Name(String, String),
}

fn strip_brackets(s: &str) -> &str {
    let s = s.trim();
    match (s.find('<'), s.find('>')) {
        (Some(a), Some(b)) if a < b => s.get(a + 1..b).unwrap_or(s),
        _ => s,
    }
}

/// Socket buffers of the UDP socket: the kernel default (about 200 KiB, a hundred or so small
/// datagrams) overflows during subscription bursts, and every drop costs a retransmission.
const UDP_BUFFER: usize = 8 << 20;

fn enlarge_buffers(udp: &UdpSocket) {
    let sock = socket2::SockRef::from(udp);
    for (what, r) in [
        ("receive", sock.set_recv_buffer_size(UDP_BUFFER)),
        ("send", sock.set_send_buffer_size(UDP_BUFFER)),
        (
            "receive timeout",
            udp.set_read_timeout(Some(udp::RECV_TIMEOUT)),
        ),
        (
            "send timeout",
            udp.set_write_timeout(Some(udp::SEND_TIMEOUT)),
        ),
    ] {
        if let Err(e) = r {
            warn!(error = %e, "cannot set the UDP {what} buffer size");
        }
    }
    if let Ok(n) = sock.recv_buffer_size() {
        debug!(bytes = n, "UDP receive buffer");
    }
}

/// Binds UDP then TCP on the same port; with port 0, retries until a port is free for both.
async fn bind_pair(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..16 {
        // A blocking socket: only the UDP threads use it, waiting in `recvmmsg` itself.
        let udp = UdpSocket::bind(listen)?;
        enlarge_buffers(&udp);
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(listen.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
}

impl Actor for SipTransport {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.tcp_io.stop();
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address().downgrade());
        match udp::spawn_reader(self.udp.clone(), self.cfg.max_message, self.keys.clone()) {
            Ok(mut rx) => {
                ctx.add_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
            }
            Err(e) => warn!(error = %e, "cannot start the UDP reader thread; UDP is not read"),
        }
        if let Some(mut rx) = self.tcp_in_rx.take() {
            ctx.add_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        }
        if let Some(listener) = self.listener.take() {
            ctx.add_stream(io::accept_stream(listener, false));
        }
        if let Some(listener) = self.tls_listener.take() {
            ctx.add_stream(io::accept_stream(listener, true));
        }
        ctx.run_interval(self.tick_interval(), |act, _| act.on_tick());
    }
}

impl SipTransport {
    fn incoming(&mut self, item: Incoming, ctx: &mut Context<Self>) {
        match item {
            Incoming::Request(req, source) => self.on_request(*req, source),
            Incoming::Response(resp, source) => self.on_response(*resp, &source),
            Incoming::Reject(resp, source) => {
                let mut bytes = Vec::new();
                encode_response(&resp, &mut bytes);
                if let Err(e) = self.send_to_source(bytes, &source) {
                    warn!(error = %e, status = resp.status, "error response send failed");
                }
            }
            Incoming::Nothing => {}
            Incoming::Accepted(stream, peer, tls) => {
                let conn_id = self.next_conn;
                self.next_conn += 1;
                let role = match (tls, &self.tls_acceptor) {
                    (false, _) => None,
                    (true, Some(a)) => Some(io::TlsRole::Accept(a.clone())),
                    (true, None) => return, // never: bind refuses a listener without a key
                };
                debug!(%peer, conn_id, tls, "connection accepted");
                self.register_stream(stream, peer, conn_id, role, ctx);
            }
            Incoming::HandshakeFailed(conn_id, reason) => {
                self.drop_conn_because(conn_id, &reason);
            }
            Incoming::RejectAndClose(resp, source, reason) => {
                let conn_id = source.conn_id;
                let mut bytes = Vec::new();
                encode_response(&resp, &mut bytes);
                if let Err(e) = self.send_to_source(bytes, &source) {
                    warn!(error = %e, status = resp.status, "error response send failed");
                }
                warn!(peer = %source.peer, %reason, "SIP framing error; answered {} and closing the TCP connection", resp.status);
                if let Some(conn_id) = conn_id {
                    self.drop_conn(conn_id);
                }
            }
            Incoming::StreamBroken(conn_id, reason) => {
                let peer = self.conns.get(&conn_id).map(|c| c.peer);
                warn!(?peer, %reason, "SIP framing error; closing the connection");
                self.drop_conn(conn_id);
            }
            Incoming::Closed(conn_id) => self.drop_conn(conn_id),
        }
    }
}

impl StreamHandler<Incoming> for SipTransport {
    fn handle(&mut self, item: Incoming, ctx: &mut Context<Self>) {
        self.incoming(item, ctx);
        self.flush_inbound();
    }

    /// Each socket stream ending (a closed connection) must not stop the actor.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

/// Parsed messages from the UDP reader thread and the TCP I/O thread.
impl StreamHandler<Batch> for SipTransport {
    fn handle(&mut self, batch: Batch, ctx: &mut Context<Self>) {
        for item in batch.0 {
            self.incoming(item, ctx);
        }
        self.flush_inbound();
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<SendResponse> for SipTransport {
    type Result = ();

    fn handle(&mut self, msg: SendResponse, _ctx: &mut Context<Self>) {
        let Some(t) = self.server.trying(msg.txn) else {
            warn!(
                txn = msg.txn,
                status = msg.resp.status,
                "response for an unknown, expired or already answered transaction dropped"
            );
            return;
        };
        let source = t.source.clone();
        let req_fp = t.fp;
        let status = msg.resp.status;
        self.counters.responses_out.inc(
            &status,
            |c| metrics::counter!("pua_xmpp_sip_responses_out_total", "code" => c.to_string()),
        );
        let out = if status >= 200 && source.transport == Transport::Udp {
            // Completed: absorb retransmissions until Timer J. A plain response is rebuilt
            // from the retransmission (and encoded by the sender thread); any other is kept.
            let (out, kept) = if is_plain(&msg.resp, req_fp) {
                (Datagram::Response(Box::new(msg.resp)), None)
            } else {
                let mut bytes = Vec::new();
                encode_response(&msg.resp, &mut bytes);
                let kept = Some(Box::new(bytes.clone()));
                (Datagram::Bytes(bytes), kept)
            };
            let done = CompletedTxn {
                fp: req_fp,
                status,
                bytes: kept,
            };
            if let Some(key) = self.server.complete(msg.txn, done) {
                let at = self.timers.ms(Instant::now() + self.timer_f());
                self.timers.timer_j.push_back((at.wrapping_add(1), key));
            }
            out
        } else {
            if status >= 200 {
                // Reliable transport: no Timer J (RFC 3261 §17.2.2).
                self.server.remove_trying(msg.txn);
            }
            Datagram::Response(Box::new(msg.resp))
        };
        if let Err(e) = self.send_datagram(out, &source) {
            warn!(peer = %source.peer, error = %e, "response send failed");
        }
    }
}

impl Handler<SendRequest> for SipTransport {
    type Result = ();

    fn handle(&mut self, msg: SendRequest, ctx: &mut Context<Self>) {
        let target = self
            .target_of(&msg.req)
            .map(|(t, default)| (t, chosen_transport(msg.transport, default)));
        match target {
            Err(e) => {
                warn!(uri = %msg.req.uri, error = %e, "request not sent");
                msg.reply_to.do_send(TransactionOutcome {
                    key: msg.key,
                    result: TxnResult::TransportError(e),
                });
            }
            Ok((Target::Addr(addr, host), transport)) => {
                if matches!(msg.req.destination, Destination::OutboundProxy)
                    && self.proxy_targets.len() > 1
                {
                    let f = Failover {
                        req: msg.req.clone(),
                        key: msg.key,
                        reply_to: msg.reply_to.clone(),
                        transport: msg.transport,
                        tried: vec![addr],
                    };
                    self.failovers.insert(self.next_client, f);
                }
                self.start_client(msg, addr, transport, host.as_deref(), ctx)
            }
            Ok((Target::Name(name, host), transport)) => {
                // Prefer an address of our socket's family: a v4 socket cannot reach ::1.
                let want_v4 = self.local.is_ipv4();
                let fut = async move {
                    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(name.as_str())
                        .await
                        .map_err(|e| format!("cannot resolve {name}: {e}"))?
                        .collect();
                    addrs
                        .iter()
                        .find(|a| a.is_ipv4() == want_v4)
                        .or(addrs.first())
                        .copied()
                        .ok_or(format!("{name} has no address"))
                };
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(addr) => act.start_client(msg, addr, transport, Some(&host), ctx),
                    Err(e) => {
                        warn!(error = %e, "request not sent");
                        msg.reply_to.do_send(TransactionOutcome {
                            key: msg.key,
                            result: TxnResult::TransportError(e),
                        });
                    }
                }));
            }
        }
    }
}

/// Debug/test query: the bound address.
#[derive(Message, Debug)]
#[rtype(result = "SocketAddr")]
pub struct GetLocalAddr;

impl Handler<GetLocalAddr> for SipTransport {
    type Result = MessageResult<GetLocalAddr>;
    fn handle(&mut self, _: GetLocalAddr, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.local)
    }
}

/// One open TCP connection, as reported by [`GetConnections`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub peer: SocketAddr,
    /// TCP or TLS.
    pub transport: Transport,
    /// We opened it (else it was accepted).
    pub outbound: bool,
    /// TCP_NODELAY as read back from the socket.
    pub nodelay: bool,
}

/// Debug/test query: the open TCP connections, sorted by id.
#[derive(Message, Debug)]
#[rtype(result = "Vec<ConnInfo>")]
pub struct GetConnections;

impl Handler<GetConnections> for SipTransport {
    type Result = MessageResult<GetConnections>;
    fn handle(&mut self, _: GetConnections, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<ConnInfo> = self
            .conns
            .iter()
            .map(|(id, c)| ConnInfo {
                conn_id: *id,
                peer: c.peer,
                transport: c.transport,
                outbound: c.outbound,
                nodelay: c.nodelay,
            })
            .collect();
        v.sort_by_key(|c| c.conn_id);
        MessageResult(v)
    }
}

/// Debug/test query: the bound address of the TLS listener.
#[derive(Message, Debug)]
#[rtype(result = "Option<SocketAddr>")]
pub struct GetTlsAddr;

impl Handler<GetTlsAddr> for SipTransport {
    type Result = MessageResult<GetTlsAddr>;
    fn handle(&mut self, _: GetTlsAddr, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.tls_local)
    }
}

/// What SIGHUP re-read: the TLS listener's certificate and key, and the CA certificates that
/// outbound connections verify servers against. Connections already up keep what they
/// negotiated; new handshakes use the new ones. `None`: keep the current one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadTls {
    pub server: Option<Arc<rustls::ServerConfig>>,
    pub client: Option<Arc<rustls::ClientConfig>>,
}

impl Handler<ReloadTls> for SipTransport {
    type Result = ();
    fn handle(&mut self, msg: ReloadTls, _: &mut Context<Self>) {
        if let Some(server) = msg.server {
            self.tls_acceptor = Some(tokio_rustls::TlsAcceptor::from(server));
            tracing::info!("TLS certificate and key reloaded");
        }
        if let Some(client) = msg.client {
            self.tls_connector = Some(tokio_rustls::TlsConnector::from(client));
            tracing::info!("TLS CA certificates for outbound connections reloaded");
        }
    }
}

/// Transport statistics (for tests and metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportStats {
    pub server_txns: usize,
    /// Completed server transactions holding their encoded response (not rebuildable).
    pub kept_responses: usize,
    pub client_txns: usize,
    pub connections: usize,
}

/// Query: live transaction and connection counts.
#[derive(Message, Debug)]
#[rtype(result = "TransportStats")]
pub struct GetStats;

impl Handler<GetStats> for SipTransport {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(TransportStats {
            server_txns: self.server.len(),
            kept_responses: self.server.kept_responses(),
            client_txns: self.clients.len(),
            connections: self.conns.len(),
        })
    }
}

/// A batch of responses: each as [`SendResponse`].
impl Handler<crate::messages::SendResponses> for SipTransport {
    type Result = ();

    fn handle(&mut self, msg: crate::messages::SendResponses, ctx: &mut Context<Self>) {
        for r in msg.0 {
            <Self as Handler<SendResponse>>::handle(self, r, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pua_xmpp::sip::NameAddr;
    use tokio::io::AsyncReadExt;

    /// Outcomes and inbound requests are not looked at here: the test reads the wire.
    struct Ignore;
    impl Actor for Ignore {
        type Context = Context<Self>;
    }
    impl Handler<TransactionOutcome> for Ignore {
        type Result = ();
        fn handle(&mut self, _: TransactionOutcome, _: &mut Context<Self>) {}
    }
    impl Handler<SipRequestIn> for Ignore {
        type Result = ();
        fn handle(&mut self, _: SipRequestIn, _: &mut Context<Self>) {}
    }

    fn subscribe(i: u32) -> OutRequest {
        let na = |uri: &str, tag: Option<&str>| NameAddr {
            display: None,
            uri: uri.to_owned(),
            tag: tag.map(str::to_owned),
        };
        OutRequest {
            method: Method::Subscribe,
            uri: format!("sip:p{i}@example.com"),
            route: Vec::new(),
            from: na("sip:romeo*example.net@gw.example.com", Some("gwtag1")),
            to: na(&format!("sip:p{i}@example.com"), None),
            call_id: format!("burst-{i}"),
            cseq: 1,
            contact: None,
            headers: vec![("Event", "presence".to_owned())],
            content_type: None,
            body: Vec::new(),
            destination: Destination::OutboundProxy,
        }
    }

    /// Requests sent to the transport in one burst (a set-up burst: one SUBSCRIBE per new pair)
    /// all go out on the one proxy connection, whole and in the order sent.
    #[actix_rt::test]
    async fn a_tcp_burst_of_requests_arrives_whole_and_in_order() {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
            return;
        };
        let Ok(proxy) = listener.local_addr() else {
            return;
        };
        let mut cfg = TransportConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.outbound_proxy = Some(proxy);
        cfg.request_transport = Transport::Tcp;
        let sink = Ignore.start().recipient::<TransactionOutcome>();
        let Ok(gw) = SipTransport::bind(cfg, Ignore.start().recipient()).await else {
            panic!("bind");
        };
        for i in 0..50 {
            gw.do_send(SendRequest {
                req: subscribe(i),
                key: u64::from(i),
                reply_to: sink.clone(),
                transport: None,
            });
        }
        let accepted = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
        let Ok(Ok((mut s, _))) = accepted else {
            panic!("no connection");
        };
        let mut wire = Vec::new();
        let mut buf = [0u8; 16384];
        while wire.windows(9).filter(|w| w == b"SUBSCRIBE").count() < 100 {
            // Each request names SUBSCRIBE twice (request line and CSeq).
            let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            match read {
                Ok(Ok(n)) if n > 0 => wire.extend_from_slice(buf.get(..n).unwrap_or_default()),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&wire);
        let call_ids: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("Call-ID: "))
            .collect();
        let want: Vec<String> = (0..50).map(|i| format!("burst-{i}")).collect();
        assert_eq!(call_ids, want);
        let messages: Vec<&str> = text.split("SUBSCRIBE sip:").skip(1).collect();
        assert_eq!(messages.len(), 50);
        for (i, m) in messages.iter().enumerate() {
            assert!(
                m.starts_with(&format!("p{i}@example.com SIP/2.0\r\n")),
                "message {i}: {m}"
            );
            assert!(m.ends_with("Content-Length: 0\r\n\r\n"), "message {i}: {m}");
        }
    }
}
