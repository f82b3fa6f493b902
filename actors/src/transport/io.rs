//! Socket plumbing of the SIP transport: decoding (framing + parse + transaction key), the
//! TCP accept stream (in the actor's context), and each TCP connection's reader and
//! coalescing writer, which run on the TCP I/O thread and hand the actor batches of parsed
//! messages. UDP is in `udp`.

use futures::{FutureExt, StreamExt};
use pua_xmpp::sip::framing::{frame_datagram, FrameError, StreamFramer};
use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::{OutResponse, SipMessage, SipRequest, SipResponse};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::txn::{request_fp, KeyHasher, TxnKey};
use crate::messages::{Source, Transport};

/// A parsed request with what the transaction layer needs, computed where it was parsed
/// (for UDP: on the reader thread, not the actor's).
pub(crate) struct InRequest {
    pub req: SipRequest,
    pub key: TxnKey,
    /// [`super::txn::request_fp`] of `req`.
    pub fp: u64,
    /// A MESSAGE's headers for instant messaging, read from the raw bytes here.
    pub im: Option<Box<pua_xmpp::im_content::MessageHeaders>>,
}

/// What the socket streams hand to the actor.
pub(crate) enum Incoming {
    Request(Box<InRequest>, Source),
    Response(Box<SipResponse>, Source),
    /// A request that failed to parse but can be answered (a ready 400).
    Reject(Box<OutResponse>, Source),
    /// Nothing to do (keepalive, dropped garbage, a socket error already logged).
    Nothing,
    /// An accepted connection: on the TLS listener when the flag is set.
    Accepted(TcpStream, SocketAddr, bool),
    /// A TLS handshake failed (already logged and counted): the connection is closed and the
    /// transactions waiting on it fail with this reason.
    HandshakeFailed(u64, String),
    /// A framing error on a stream: the connection is closed.
    StreamBroken(u64, String),
    /// An oversize message on a stream whose head parsed: answer (413), then close.
    RejectAndClose(Box<OutResponse>, Source, String),
    Closed(u64),
}

/// Parsed messages, in arrival order (of one socket or connection).
pub(crate) struct Batch(pub Vec<Incoming>);

/// Messages handed to the actor at most per batch.
const BATCH_MAX: usize = 64;

/// A short, escaped excerpt of raw bytes for log lines.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let cut = bytes.len().min(80);
    String::from_utf8_lossy(&bytes[..cut])
        .escape_debug()
        .to_string()
}

/// Parses one framed message; parse failures are logged here.
pub(crate) fn decode(bytes: &[u8], source: Source, keys: &KeyHasher) -> Incoming {
    match parse_message(bytes) {
        Ok(SipMessage::Request(req)) => {
            let key = keys.key(&req);
            // Only completed UDP transactions compare fingerprints (no Timer J on TCP).
            let fp = match source.transport {
                Transport::Udp => request_fp(&req),
                Transport::Tcp | Transport::Tls => 0,
            };
            // Only a MESSAGE pays for the second look at its raw bytes.
            let im = (req.method == pua_xmpp::sip::Method::Message)
                .then(|| Box::new(pua_xmpp::im_content::MessageHeaders::from_raw(bytes)));
            Incoming::Request(Box::new(InRequest { req, key, fp, im }), source)
        }
        Ok(SipMessage::Response(r)) => Incoming::Response(Box::new(r), source),
        Err(e) => {
            warn!(peer = %source.peer, reason = %e, excerpt = %excerpt(bytes), "unparseable SIP message");
            match e.response {
                Some(resp) => Incoming::Reject(Box::new(resp), source),
                None => Incoming::Nothing,
            }
        }
    }
}

/// Frames and parses one datagram.
pub(crate) fn decode_datagram(
    data: &[u8],
    peer: SocketAddr,
    max_message: usize,
    keys: &KeyHasher,
) -> Incoming {
    // RFC 5626 keepalives (CRLF) and empty datagrams are not messages.
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Incoming::Nothing;
    }
    let source = Source {
        transport: Transport::Udp,
        peer,
        conn_id: None,
    };
    match frame_datagram(data, max_message) {
        Ok(msg) => decode(msg, source, keys),
        Err(FrameError::TooLarge { size }) => match super::too_large_answer(data) {
            Some(resp) => {
                warn!(%peer, size, max_message, "oversize SIP request; answering 413");
                Incoming::Reject(Box::new(resp), source)
            }
            None => {
                warn!(%peer, size, max_message, excerpt = %excerpt(data), "oversize SIP datagram dropped");
                Incoming::Nothing
            }
        },
        Err(e) => {
            warn!(%peer, reason = %e, excerpt = %excerpt(data), "bad SIP datagram");
            Incoming::Nothing
        }
    }
}

/// Accepted TCP connections (of the TLS listener with `tls`). Accept errors (e.g. out of file
/// descriptors) are logged.
pub(crate) fn accept_stream(
    listener: TcpListener,
    tls: bool,
) -> impl futures::Stream<Item = Incoming> {
    futures::stream::poll_fn(move |cx| match listener.poll_accept(cx) {
        Poll::Ready(Ok((stream, peer))) => Poll::Ready(Some(Incoming::Accepted(stream, peer, tls))),
        Poll::Ready(Err(e)) => {
            warn!(error = %e, "TCP accept failed");
            Poll::Ready(Some(Incoming::Nothing))
        }
        Poll::Pending => Poll::Pending,
    })
}

/// Bytes one TCP read may return: large, so that a burst of small messages costs one syscall.
const TCP_READ_BUFFER: usize = 64 * 1024;

/// The read half of one TCP or TLS connection, framed by Content-Length and parsed. It ends
/// after yielding `Closed` or `StreamBroken`.
pub(crate) struct TcpReader<R> {
    rd: R,
    transport: Transport,
    framer: StreamFramer,
    buf: Box<[u8]>,
    conn: u64,
    peer: SocketAddr,
    keys: KeyHasher,
    done: bool,
    /// Set while reads are paused because the shards are behind (`backlog`): the next look.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How often a paused reader looks at the backlog again.
const PAUSE_POLL: std::time::Duration = std::time::Duration::from_millis(1);

impl<R: AsyncRead + Unpin> TcpReader<R> {
    pub(crate) fn new(
        rd: R,
        transport: Transport,
        conn: u64,
        peer: SocketAddr,
        max_message: usize,
        keys: KeyHasher,
    ) -> Self {
        TcpReader {
            rd,
            transport,
            framer: StreamFramer::new(max_message),
            buf: vec![0u8; TCP_READ_BUFFER].into_boxed_slice(),
            conn,
            peer,
            keys,
            done: false,
            pause: None,
        }
    }
}

impl<R> TcpReader<R> {
    fn source(&self) -> Source {
        Source {
            transport: self.transport,
            peer: self.peer,
            conn_id: Some(self.conn),
        }
    }
}

impl<R: AsyncRead + Unpin> futures::Stream for TcpReader<R> {
    type Item = Incoming;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let source = this.source();
            match this.framer.next_frame() {
                Some(Ok(msg)) => {
                    return Poll::Ready(Some(decode(msg, source, &this.keys)));
                }
                Some(Err(e)) => {
                    this.done = true;
                    let answer = match e {
                        FrameError::TooLarge { .. } => {
                            super::too_large_answer(this.framer.rejected_head())
                        }
                        _ => None,
                    };
                    return Poll::Ready(Some(match answer {
                        Some(resp) => {
                            Incoming::RejectAndClose(Box::new(resp), this.source(), e.to_string())
                        }
                        None => Incoming::StreamBroken(this.conn, e.to_string()),
                    }));
                }
                None => {}
            }
            if crate::backlog::over() {
                // The shards are behind: leave the bytes in the socket, so TCP flow control
                // slows the peer down instead of the mailboxes growing (see `backlog`).
                if this.pause.is_none() {
                    metrics::counter!("pua_xmpp_sip_read_pauses_total").increment(1);
                    debug!(peer = %this.peer, waiting = crate::backlog::waiting(), "SIP reads paused: shards behind");
                }
                let pause = this
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(PAUSE_POLL)));
                match pause.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        pause
                            .as_mut()
                            .reset(tokio::time::Instant::now() + PAUSE_POLL);
                        continue;
                    }
                }
            }
            this.pause = None;
            let mut rb = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.rd).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        this.done = true;
                        return Poll::Ready(Some(Incoming::Closed(this.conn)));
                    }
                    let data = this.buf.get(..n).unwrap_or_default();
                    this.framer.push(data);
                }
                Poll::Ready(Err(e)) => {
                    debug!(peer = %this.peer, error = %e, "TCP read error");
                    this.done = true;
                    return Poll::Ready(Some(Incoming::Closed(this.conn)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Writes queued messages to one connection, coalescing what is already queued into one
/// write. Ends when the queue's sender is dropped (the connection is closed by the actor) or a
/// write fails; dropping the write half then shuts the connection down.
pub(crate) async fn tcp_writer<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch: Vec<u8> = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        // TLS buffers records: the flush puts them on the wire (a no-op for TCP).
        let written = match wr.write_all(&batch).await {
            Ok(()) => wr.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            debug!(error = %e, "TCP write failed");
            break;
        }
    }
    // For TLS, a close_notify; for TCP, a FIN (as dropping the write half would).
    let _ = wr.shutdown().await;
}

/// What the I/O thread needs to read one connection.
pub(crate) struct ConnInfo {
    pub conn: u64,
    pub peer: SocketAddr,
    pub max_message: usize,
    pub keys: KeyHasher,
    /// TLS to run over the connection before any SIP.
    pub tls: Option<TlsRole>,
}

/// The TLS side we take on one connection.
pub(crate) enum TlsRole {
    /// Accepted on the TLS listener: we present our certificate.
    Accept(tokio_rustls::TlsAcceptor),
    /// Opened by us: the peer must present a certificate valid for this name.
    Connect(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
}

/// Longest wait for a TLS handshake: a peer that connects and says nothing must not hold the
/// connection (and the requests queued on it) until Timer F.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The I/O of one TCP connection on the TCP I/O thread: registers the socket there, runs the
/// TLS handshake when it is a TLS connection, starts its writer, and reads, frames and parses, handing the actor what is ready in one batch.
/// Ends after `Closed` or `StreamBroken`, or when the actor is gone.
pub(crate) async fn tcp_connection(
    std: std::net::TcpStream,
    mut info: ConnInfo,
    out: mpsc::Receiver<Vec<u8>>,
    to_actor: mpsc::Sender<Batch>,
) {
    let stream = match TcpStream::from_std(std) {
        Ok(s) => s,
        Err(e) => {
            warn!(peer = %info.peer, error = %e, "cannot register the TCP connection");
            let _ = to_actor
                .send(Batch(vec![Incoming::Closed(info.conn)]))
                .await;
            return;
        }
    };
    match info.tls.take() {
        None => {
            let (rd, wr) = stream.into_split();
            serve(rd, wr, Transport::Tcp, info, out, to_actor).await;
        }
        Some(role) => {
            let (inbound, shake) = match role {
                TlsRole::Accept(acceptor) => (
                    true,
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .map(|r| r.map(|s| s.map(tokio_rustls::TlsStream::Server)))
                        .boxed(),
                ),
                TlsRole::Connect(connector, name) => (
                    false,
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
                        .map(|r| r.map(|s| s.map(tokio_rustls::TlsStream::Client)))
                        .boxed(),
                ),
            };
            let direction = if inbound { "inbound" } else { "outbound" };
            let reason = match shake.await {
                Ok(Ok(tls)) => {
                    debug!(peer = %info.peer, direction, "TLS handshake done");
                    let (rd, wr) = tokio::io::split(tls);
                    serve(rd, wr, Transport::Tls, info, out, to_actor).await;
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no handshake within {}s", HANDSHAKE_TIMEOUT.as_secs()),
            };
            metrics::counter!("pua_xmpp_sip_tls_handshake_failures_total", "direction" => direction)
                .increment(1);
            warn!(peer = %info.peer, direction, error = %reason, "TLS handshake failed; connection refused");
            let _ = to_actor
                .send(Batch(vec![Incoming::HandshakeFailed(
                    info.conn,
                    format!("TLS handshake with {} failed: {reason}", info.peer),
                )]))
                .await;
        }
    }
}

/// Reads and writes one established connection (TCP, or TLS after its handshake).
async fn serve<R, W>(
    rd: R,
    wr: W,
    transport: Transport,
    info: ConnInfo,
    out: mpsc::Receiver<Vec<u8>>,
    to_actor: mpsc::Sender<Batch>,
) where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin + 'static,
{
    actix_rt::spawn(tcp_writer(wr, out));
    let mut reader = TcpReader::new(
        rd,
        transport,
        info.conn,
        info.peer,
        info.max_message,
        info.keys,
    );
    while let Some(first) = reader.next().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match reader.next().now_or_never() {
                Some(Some(msg)) => batch.push(msg),
                _ => break,
            }
        }
        if to_actor.send(Batch(batch)).await.is_err() {
            return;
        }
    }
}
