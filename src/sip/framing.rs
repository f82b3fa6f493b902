//! Message boundaries: Content-Length framing of TCP streams (RFC 3261 §18.3) and the
//! datagram rules for UDP. rsip ignores Content-Length, so this is ours. Framing only finds
//! where a message ends; it does not parse headers beyond `Content-Length` (`l` compact).

/// The largest message (header section plus body) we accept by default.
pub const DEFAULT_MAX_MESSAGE: usize = 65536;

/// Why bytes could not be framed. On a stream every error is fatal: the caller closes the
/// connection. On UDP, `Truncated` and `BadContentLength` deserve a 400 when the bytes parse
/// as a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Header section plus declared body exceed the limit.
    TooLarge { size: usize },
    /// A stream message without Content-Length cannot be delimited (RFC 3261 §18.3).
    MissingContentLength,
    /// The Content-Length value is not a number, or two values disagree.
    BadContentLength(String),
    /// The datagram body is shorter than Content-Length.
    Truncated { declared: usize, got: usize },
    /// No end of the header section within the limit.
    HeaderTooLarge,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { size } => write!(f, "message of {size} octets is too large"),
            FrameError::MissingContentLength => f.write_str("missing Content-Length on a stream"),
            FrameError::BadContentLength(v) => write!(f, "bad Content-Length {v:?}"),
            FrameError::Truncated { declared, got } => {
                write!(f, "body truncated: Content-Length {declared}, got {got}")
            }
            FrameError::HeaderTooLarge => f.write_str("header section too large"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Index just past the blank line that ends the header section (CRLF CRLF, or bare LF
/// variants), searching from `from`; `None` if not there yet.
pub(crate) fn header_end(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < data.len() {
        // Find the next LF, then check whether an empty line follows it.
        let lf = i + memchr::memchr(b'\n', data.get(i..)?)?;
        match data.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if data.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// The Content-Length of a header section: `Ok(None)` when absent. Several equal values are
/// tolerated; differing ones are an error. Folded headers are not considered (nobody folds
/// Content-Length).
fn content_length(head: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut found: Option<usize> = None;
    let mut rest = head;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(lf) => (
                rest.get(..lf).unwrap_or_default(),
                rest.get(lf + 1..).unwrap_or_default(),
            ),
            None => (rest, &[][..]),
        };
        rest = next;
        // Only a line whose name starts with `c` or `l` can be Content-Length: the others are
        // skipped without searching them for the colon (most of the cost of framing).
        let first = line.iter().find(|&&b| b != b' ' && b != b'\t');
        if !matches!(first, Some(b'c' | b'C' | b'l' | b'L')) {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let name = name.trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        let text = String::from_utf8_lossy(value);
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::BadContentLength(text.into_owned()));
        }
        let n: usize = text
            .parse()
            .map_err(|_| FrameError::BadContentLength(text.clone().into_owned()))?;
        match found {
            Some(prev) if prev != n => return Err(FrameError::BadContentLength(text.into_owned())),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// Number of leading CR/LF octets: keepalives (RFC 5626 §3.5.1) and stray line ends.
fn leading_crlf(data: &[u8]) -> usize {
    data.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// TCP byte stream -> messages by Content-Length (RFC 3261 §18.3). Skips CRLF keepalives between
/// messages. Handles partial reads and several messages in one read. Bounded memory: a header
/// section or body over max_message is an error (the caller closes the connection).
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf` (consumed bytes are compacted away on `push`).
    start: usize,
    /// Where to resume the search for the end of the header section (relative to `start`).
    scanned: usize,
    max_message: usize,
    /// Once an error is returned, it is returned again and input is ignored.
    failed: Option<FrameError>,
    /// The header section of a message refused as `TooLarge`: its 413 must echo the Via,
    /// From, To, Call-ID and CSeq, and the rest of the buffer is dropped with the error.
    rejected_head: Vec<u8>,
}

impl StreamFramer {
    pub fn new(max_message: usize) -> Self {
        StreamFramer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_message,
            failed: None,
            rejected_head: Vec::new(),
        }
    }

    /// Appends bytes read from the socket. Ignored after an error.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `None` when more bytes are needed, or an error (fatal: the
    /// connection must be closed).
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        self.next_frame().map(|r| r.map(<[u8]>::to_vec))
    }

    /// [`StreamFramer::next_message`] without the copy: the message is borrowed from the
    /// framer's buffer until the next call or [`StreamFramer::push`].
    pub fn next_frame(&mut self) -> Option<Result<&[u8], FrameError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        match self.try_next() {
            Ok(Some(range)) => Some(Ok(self.buf.get(range).unwrap_or_default())),
            Ok(None) => None,
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.start = 0;
                self.scanned = 0;
                Some(Err(e))
            }
        }
    }

    /// The range of `buf` holding the next complete message, already consumed.
    fn try_next(&mut self) -> Result<Option<std::ops::Range<usize>>, FrameError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let skip = leading_crlf(pending);
        if skip > 0 {
            self.start += skip;
            self.scanned = 0;
        }
        let pending = self.buf.get(self.start..).unwrap_or_default();
        if pending.is_empty() {
            return Ok(None);
        }
        // Resume a little before the previous scan end: the blank line may straddle reads.
        let from = self.scanned.saturating_sub(3);
        let Some(head_len) = header_end(pending, from) else {
            if pending.len() > self.max_message {
                return Err(FrameError::HeaderTooLarge);
            }
            self.scanned = pending.len();
            return Ok(None);
        };
        if head_len > self.max_message {
            return Err(FrameError::HeaderTooLarge);
        }
        let declared = content_length(pending.get(..head_len).unwrap_or_default())?
            .ok_or(FrameError::MissingContentLength)?;
        let size = head_len.saturating_add(declared);
        if size > self.max_message {
            self.rejected_head = pending.get(..head_len).unwrap_or_default().to_vec();
            return Err(FrameError::TooLarge { size });
        }
        if pending.len() < size {
            self.scanned = head_len;
            return Ok(None);
        }
        let msg = self.start..self.start + size;
        self.start += size;
        self.scanned = 0;
        Ok(Some(msg))
    }

    /// Octets held that do not yet form a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// After a `TooLarge` error: the refused message's header section (blank line included),
    /// for the 413. Empty otherwise.
    pub fn rejected_head(&self) -> &[u8] {
        &self.rejected_head
    }
}

/// One UDP datagram -> the message bytes: a body longer than Content-Length is truncated to it; a
/// shorter one is `Truncated` (400); no Content-Length on UDP = the rest of the datagram.
pub fn frame_datagram(data: &[u8], max_message: usize) -> Result<&[u8], FrameError> {
    if data.len() > max_message {
        return Err(FrameError::TooLarge { size: data.len() });
    }
    let data = data.get(leading_crlf(data)..).unwrap_or_default();
    let Some(head_len) = header_end(data, 0) else {
        // No blank line: no body; the parser decides whether the headers make sense.
        return Ok(data);
    };
    let got = data.len() - head_len;
    match content_length(data.get(..head_len).unwrap_or_default())? {
        None => Ok(data),
        Some(declared) if declared > got => Err(FrameError::Truncated { declared, got }),
        Some(declared) => Ok(data.get(..head_len + declared).unwrap_or(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M1: &[u8] =
        b"NOTIFY sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nContent-Length: 5\r\n\r\nhello";
    const M2: &[u8] = b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n";

    fn drain(f: &mut StreamFramer) -> Vec<Result<Vec<u8>, FrameError>> {
        std::iter::from_fn(|| f.next_message()).take(10).collect()
    }

    #[test]
    fn several_messages_in_one_read_with_keepalives() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        let mut data = b"\r\n\r\n".to_vec();
        data.extend_from_slice(M1);
        data.extend_from_slice(b"\r\n\r\n");
        data.extend_from_slice(M2);
        data.extend_from_slice(b"\r\n");
        f.push(&data);
        assert_eq!(drain(&mut f), vec![Ok(M1.to_vec()), Ok(M2.to_vec())]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn message_split_byte_by_byte() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        let mut out = Vec::new();
        for chunk in M1.chunks(1).chain(M2.chunks(1)) {
            f.push(chunk);
            out.extend(drain(&mut f));
        }
        assert_eq!(out, vec![Ok(M1.to_vec()), Ok(M2.to_vec())]);
    }

    #[test]
    fn message_split_across_three_reads() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        f.push(&M1[..10]);
        assert_eq!(f.next_message(), None);
        f.push(&M1[10..M1.len() - 3]);
        assert_eq!(f.next_message(), None);
        assert_eq!(f.buffered(), M1.len() - 3);
        f.push(&M1[M1.len() - 3..]);
        assert_eq!(f.next_message(), Some(Ok(M1.to_vec())));
        assert_eq!(f.next_message(), None);
    }

    #[test]
    fn missing_content_length_on_stream_is_fatal() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::MissingContentLength))
        );
        f.push(M2);
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::MissingContentLength))
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn bad_content_length() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        f.push(b"SIP/2.0 200 OK\r\nContent-Length: 1x\r\n\r\n");
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::BadContentLength("1x".into())))
        );
        assert_eq!(
            frame_datagram(
                b"SIP/2.0 200 OK\r\nl: 1\r\nContent-Length: 2\r\n\r\nab",
                100
            ),
            Err(FrameError::BadContentLength("2".into()))
        );
    }

    #[test]
    fn oversize_body_and_header() {
        let mut f = StreamFramer::new(100);
        f.push(b"SIP/2.0 200 OK\r\nContent-Length: 90\r\n\r\n");
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::TooLarge { size: 128 }))
        );
        assert_eq!(
            f.rejected_head(),
            b"SIP/2.0 200 OK\r\nContent-Length: 90\r\n\r\n"
        );

        let mut f = StreamFramer::new(100);
        f.push(
            b"OPTIONS sip:a SIP/2.0\r\nl: 0\r\n\r\n\r\n\r\nOPTIONS sip:b SIP/2.0\r\nl: 99\r\n\r\n",
        );
        assert!(matches!(f.next_message(), Some(Ok(_))));
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::TooLarge { size: 131 }))
        );
        assert_eq!(f.rejected_head(), b"OPTIONS sip:b SIP/2.0\r\nl: 99\r\n\r\n");

        let mut f = StreamFramer::new(100);
        f.push(&[b'a'; 60]);
        assert_eq!(f.next_message(), None);
        f.push(&[b'a'; 60]);
        assert_eq!(f.next_message(), Some(Err(FrameError::HeaderTooLarge)));
        assert_eq!(f.buffered(), 0);

        assert_eq!(
            frame_datagram(&[b'a'; 101], 100),
            Err(FrameError::TooLarge { size: 101 })
        );
    }

    #[test]
    fn datagram_body_longer_than_content_length_is_cut() {
        let d = b"NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nhello world";
        assert_eq!(
            frame_datagram(d, 1000),
            Ok(&b"NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nhello"[..])
        );
    }

    #[test]
    fn datagram_body_shorter_than_content_length_is_truncated() {
        let d = b"NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 50\r\n\r\nhello";
        assert_eq!(
            frame_datagram(d, 1000),
            Err(FrameError::Truncated {
                declared: 50,
                got: 5
            })
        );
    }

    #[test]
    fn datagram_without_content_length_takes_the_rest() {
        let d = b"\r\nNOTIFY sip:a@b SIP/2.0\nVia: x\n\nhello\n";
        assert_eq!(
            frame_datagram(d, 1000),
            Ok(&b"NOTIFY sip:a@b SIP/2.0\nVia: x\n\nhello\n"[..])
        );
        assert_eq!(frame_datagram(b"\r\n\r\n", 1000), Ok(&b""[..]));
    }

    #[test]
    fn display_names_the_problem() {
        assert_eq!(
            FrameError::Truncated {
                declared: 9,
                got: 2
            }
            .to_string(),
            "body truncated: Content-Length 9, got 2"
        );
    }

    proptest! {
        #[test]
        fn framer_never_panics_and_stays_bounded(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(1usize..64, 0..20),
        ) {
            let max = 200;
            let mut f = StreamFramer::new(max);
            let mut rest = &data[..];
            let mut cuts = cuts.into_iter();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                f.push(chunk);
                prop_assert!(f.buffered() <= max + chunk.len());
                while let Some(r) = f.next_message() {
                    if let Ok(m) = &r {
                        prop_assert!(m.len() <= max);
                    } else {
                        break;
                    }
                }
                prop_assert!(f.buffered() <= max + chunk.len());
            }
        }

        #[test]
        fn framer_chunking_does_not_change_the_result(
            cuts in proptest::collection::vec(1usize..40, 0..10),
        ) {
            let mut all = M1.to_vec();
            all.extend_from_slice(b"\r\n");
            all.extend_from_slice(M2);
            all.extend_from_slice(M1);
            let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
            let mut out = Vec::new();
            let mut rest = &all[..];
            let mut cuts = cuts.into_iter();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                f.push(chunk);
                out.extend(drain(&mut f));
            }
            prop_assert_eq!(out, vec![Ok(M1.to_vec()), Ok(M2.to_vec()), Ok(M1.to_vec())]);
        }

        #[test]
        fn frame_datagram_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(m) = frame_datagram(&data, 300) {
                prop_assert!(m.len() <= data.len());
            }
        }
    }
}
