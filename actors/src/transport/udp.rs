//! UDP I/O of the SIP transport, off the actor's thread.
//!
//! One peer (Kamailio, a proxy) sends from one 4-tuple, so more sockets (SO_REUSEPORT) would
//! not spread its datagrams: throughput comes from taking the per-datagram work off the
//! actor. A reader thread drains the socket with `recvmmsg` (up to [`BATCH`] datagrams per
//! syscall), frames and parses them, and hands the actor one batch of parsed messages, so the
//! actor only matches transactions and dispatches. A sender thread drains a queue of
//! outgoing datagrams with `sendmmsg`, so the actor makes no syscall per response. Both use
//! the one socket, which only they use and which is blocking: the threads wait in the
//! syscalls themselves (responses leave from the listening address, RFC 3261 §18.2.2).

use pua_xmpp::sip::encode::encode_response;
use pua_xmpp::sip::OutResponse;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::io::{decode_datagram, Batch, Incoming};
use super::txn::KeyHasher;

/// Datagrams per `recvmmsg` / `sendmmsg` call.
pub(crate) const BATCH: usize = 64;

/// Batches the reader may queue for the actor before it stops reading (the socket's receive
/// buffer then absorbs bursts): at most 4,096 messages, so the queue adds little latency.
const QUEUE_BATCHES: usize = 64;

/// How often a blocked reader checks whether the actor is gone (the socket's SO_RCVTIMEO).
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a send may wait for room in a full send buffer (SO_SNDTIMEO); then the rest of
/// the batch is dropped, as any lost datagram (retransmissions cover it).
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_millis(50);

/// Starts the reader thread on the (blocking) socket. It ends when the returned receiver is
/// dropped (the actor stopped).
pub(crate) fn spawn_reader(
    sock: Arc<UdpSocket>,
    max_message: usize,
    keys: KeyHasher,
) -> io::Result<mpsc::Receiver<Batch>> {
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    std::thread::Builder::new()
        .name("sip-udp-rx".to_owned())
        .spawn(move || reader_loop(&sock, max_message, &keys, &tx))?;
    Ok(rx)
}

/// Receive buffers for one `recvmmsg` call. The header array points into the other two, so
/// they are boxed slices that never move or grow.
struct RecvBufs {
    slot: usize,
    data: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl RecvBufs {
    fn new(slot: usize) -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
        // bytes are a valid value.
        let zero_addr: libc::sockaddr_storage = unsafe { zeroed() };
        let zero_iov: libc::iovec = unsafe { zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { zeroed() };
        RecvBufs {
            slot,
            data: vec![0u8; slot * BATCH].into_boxed_slice(),
            addrs: vec![zero_addr; BATCH].into_boxed_slice(),
            iovs: vec![zero_iov; BATCH].into_boxed_slice(),
            hdrs: vec![zero_hdr; BATCH].into_boxed_slice(),
        }
    }

    /// Points the headers at the buffers (the kernel overwrites name lengths and flags).
    fn arm(&mut self) {
        let base = self.data.as_mut_ptr();
        for i in 0..BATCH {
            if let Some(iov) = self.iovs.get_mut(i) {
                // SAFETY: i * slot + slot <= data.len(), so the pointer stays inside `data`.
                iov.iov_base = unsafe { base.add(i * self.slot) }.cast();
                iov.iov_len = self.slot;
            }
        }
        let iovs = self.iovs.as_mut_ptr();
        let addrs = self.addrs.as_mut_ptr();
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            // SAFETY: i < BATCH = iovs.len() = addrs.len().
            h.msg_hdr.msg_iov = unsafe { iovs.add(i) };
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = unsafe { addrs.add(i) }.cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
    }

    /// Datagram `i` of the last call and its sender.
    fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let h = self.hdrs.get(i)?;
        let len = (h.msg_len as usize).min(self.slot);
        let start = i * self.slot;
        let data = self.data.get(start..start + len)?;
        Some((data, from_storage(self.addrs.get(i)?)?))
    }
}

fn reader_loop(sock: &UdpSocket, max_message: usize, keys: &KeyHasher, tx: &mpsc::Sender<Batch>) {
    let fd = sock.as_raw_fd();
    // One byte more than the largest message we accept, so an oversize one is recognised.
    let mut bufs = RecvBufs::new(max_message.clamp(1500, 65535) + 1);
    loop {
        if tx.is_closed() {
            return;
        }
        bufs.arm();
        // Waits (at most RECV_TIMEOUT) for one datagram, then takes what else is queued: one
        // syscall per batch.
        // SAFETY: `hdrs` holds BATCH headers pointing into live buffers of `bufs`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                bufs.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => {}
                // E.g. ICMP port-unreachable reported for an earlier send.
                _ => debug!(error = %e, "UDP receive error"),
            }
            continue;
        }
        let n = usize::try_from(n).unwrap_or(0);
        let mut batch = Vec::with_capacity(n);
        for i in 0..n {
            let Some((data, peer)) = bufs.datagram(i) else {
                continue;
            };
            match decode_datagram(data, peer, max_message, keys) {
                Incoming::Nothing => {}
                msg => batch.push(msg),
            }
        }
        if !batch.is_empty() && tx.blocking_send(Batch(batch)).is_err() {
            return;
        }
    }
}

/// One datagram to send: bytes, or a response the sender thread encodes (so the actor does
/// not spend the encoding time on the hot path's `200 OK`s).
pub(crate) enum Datagram {
    Bytes(Vec<u8>),
    Response(Box<OutResponse>),
}

impl Datagram {
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        match self {
            Datagram::Bytes(b) => b,
            Datagram::Response(r) => {
                let mut b = Vec::new();
                encode_response(&r, &mut b);
                b
            }
        }
    }
}

/// The queue of datagrams to send; the sender thread ends when it is dropped.
pub(crate) struct UdpSender {
    tx: std_mpsc::Sender<(Datagram, SocketAddr)>,
    local: SocketAddr,
}

impl UdpSender {
    /// Starts the sender thread on the (blocking) socket.
    pub(crate) fn spawn(sock: Arc<UdpSocket>) -> io::Result<Self> {
        let local = sock.local_addr()?;
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("sip-udp-tx".to_owned())
            .spawn(move || sender_loop(&sock, &rx))?;
        Ok(UdpSender { tx, local })
    }

    /// Queues a datagram. Never waits; the only errors are the ones known at once (an address
    /// the socket cannot reach, the thread gone). Later failures are logged by the thread and
    /// covered by retransmissions, like any lost datagram.
    pub(crate) fn send(&self, datagram: Datagram, to: SocketAddr) -> Result<(), String> {
        if to.is_ipv4() != self.local.is_ipv4() {
            return Err(format!(
                "UDP send to {to} failed: not reachable from the socket on {}",
                self.local
            ));
        }
        self.tx
            .send((datagram, to))
            .map_err(|_| format!("UDP send to {to} failed: the sender thread stopped"))
    }
}

fn sender_loop(sock: &UdpSocket, rx: &std_mpsc::Receiver<(Datagram, SocketAddr)>) {
    let fd = sock.as_raw_fd();
    let mut batch: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    // SAFETY (zeroed): plain C structs for which all-zero bytes are a valid value.
    let mut addrs: Box<[libc::sockaddr_storage]> = vec![unsafe { zeroed() }; BATCH].into();
    let mut iovs: Box<[libc::iovec]> = vec![unsafe { zeroed() }; BATCH].into();
    let mut hdrs: Box<[libc::mmsghdr]> = vec![unsafe { zeroed() }; BATCH].into();
    while let Ok((first, to)) = rx.recv() {
        batch.clear();
        batch.push((first.into_bytes(), to));
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok((m, to)) => batch.push((m.into_bytes(), to)),
                Err(_) => break,
            }
        }
        let n = batch.len();
        for (i, (bytes, to)) in batch.iter().enumerate() {
            let (Some(addr), Some(iov), Some(h)) =
                (addrs.get_mut(i), iovs.get_mut(i), hdrs.get_mut(i))
            else {
                continue;
            };
            let len = to_storage(to, addr);
            iov.iov_base = bytes.as_ptr().cast_mut().cast();
            iov.iov_len = bytes.len();
            h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = len;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        send_batch(fd, &mut hdrs, &batch, n);
    }
}

/// Sends the first `n` prepared headers. A full send buffer is waited out for SEND_TIMEOUT
/// (then the rest is dropped: retransmissions cover it); a datagram the kernel refuses is
/// skipped.
fn send_batch(fd: RawFd, hdrs: &mut [libc::mmsghdr], batch: &[(Vec<u8>, SocketAddr)], n: usize) {
    let mut off = 0;
    while off < n {
        let Some(rest) = hdrs.get_mut(off..n) else {
            return;
        };
        // SAFETY: `rest` holds prepared headers whose pointers target `addrs`, `iovs` and the
        // byte buffers of `batch`, all alive for this call.
        let sent = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
        if sent > 0 {
            off += usize::try_from(sent).unwrap_or(1);
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                warn!(dropped = n - off, "UDP send buffer full; datagrams dropped");
                return;
            }
            _ => {
                let to = batch.get(off).map(|m| m.1);
                debug!(?to, error = %e, "UDP send failed");
                off += 1;
            }
        }
    }
}

/// Writes `addr` as a C socket address; returns its length.
fn to_storage(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in and sockaddr_in6.
    match addr {
        SocketAddr::V4(a) => {
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a C socket address written by the kernel.
fn from_storage(st: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which structure the kernel wrote; sockaddr_storage is
    // large enough and aligned for both.
    match i32::from(st.ss_family) {
        libc::AF_INET => {
            let sin =
                unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            let sin6 =
                unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_c_storage() {
        for text in ["127.0.0.1:5060", "[::1]:5080", "[fe80::1%2]:7"] {
            let addr: SocketAddr = text.parse().unwrap();
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut st: libc::sockaddr_storage = unsafe { zeroed() };
            to_storage(&addr, &mut st);
            assert_eq!(from_storage(&st), Some(addr), "{text}");
        }
    }
}
