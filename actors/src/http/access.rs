//! Who may use the admin endpoints of the HTTP listener (`http.allow`, `http.token`).
//!
//! `/health` stays open (load balancers and orchestrators probe it without credentials); every
//! other path needs a client address on the allow-list (when one is set, else 403) and the
//! bearer token (when one is set, else 401 with `WWW-Authenticate: Bearer`). Each refusal is
//! logged with the address, the path and the reason, never with the token, and counted.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::HttpResponse;
use std::net::IpAddr;

/// The one path served without address or token checks.
pub const OPEN_PATH: &str = "/health";
/// Counter of refused requests, by `reason` (`address` or `token`).
pub const REFUSALS: &str = "pua_xmpp_http_refusals_total";

/// An IP address or a CIDR prefix (`10.0.0.0/8`, `2001:db8::/32`) of `http.allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `ip` or `ip/len`; the host bits of a prefix must be zero (`10.1.2.3/8` is a typo).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let net: IpAddr = ip
            .parse()
            .map_err(|_| format!("expected an IP address or CIDR prefix, got {s:?}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("prefix length of {s:?} must be 0 to {max}")),
            },
        };
        let cidr = Cidr { net, prefix };
        if cidr.masked(net) != bits(net) {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{prefix}?)",
                from_bits(net, cidr.masked(net))
            ));
        }
        Ok(cidr)
    }

    fn mask(&self) -> u128 {
        let width = if self.net.is_ipv4() { 32 } else { 128 };
        if self.prefix == 0 {
            0
        } else {
            (u128::MAX << (width - u32::from(self.prefix))) & width_mask(width)
        }
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        bits(ip) & self.mask()
    }

    /// Whether `ip` is inside; an IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`) counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == bits(self.net) & self.mask()
    }
}

fn width_mask(width: u32) -> u128 {
    if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_bits(like: IpAddr, b: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(b as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(b)),
    }
}

/// Checks a bearer token's syntax (RFC 6750 §2.1 `b64token`) and length. The message never
/// contains the token.
pub fn check_token(token: &str) -> Result<(), String> {
    const MIN: usize = 16;
    if token.len() < MIN {
        return Err(format!("must be at least {MIN} characters"));
    }
    let body = token.trim_end_matches('=');
    let ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("may only contain letters, digits and - . _ ~ + / (then = padding)".into())
    }
}

/// Equality whose time depends only on the length of `presented`, not on where it differs
/// from `expected` (so the token cannot be guessed byte by byte from response times).
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, &p) in presented.iter().enumerate() {
        let e = expected
            .get(i % expected.len().max(1))
            .copied()
            .unwrap_or(0);
        diff |= usize::from(std::hint::black_box(p ^ e));
    }
    std::hint::black_box(diff) == 0
}

/// The access policy of one listener.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Empty: any address.
    pub allow: Vec<Cidr>,
    /// `None`: no token needed. Never logged (see the `Debug` of [`Secret`]).
    pub token: Option<Secret>,
}

/// A token that prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the client address is not on `http.allow`.
    Address,
    /// 401: no `Authorization: Bearer` header.
    TokenMissing,
    /// 401: a bearer token that is not `http.token`.
    TokenWrong,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Address => "address",
            Refusal::TokenMissing | Refusal::TokenWrong => "token",
        }
    }
    fn text(self) -> &'static str {
        match self {
            Refusal::Address => "client address not in http.allow",
            Refusal::TokenMissing => "no bearer token",
            Refusal::TokenWrong => "wrong bearer token",
        }
    }
    fn response(self) -> HttpResponse {
        match self {
            Refusal::Address => {
                HttpResponse::Forbidden().body("forbidden: client address not allowed\n")
            }
            Refusal::TokenMissing => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"pua-xmpp\""))
                .body("unauthorized: bearer token required\n"),
            Refusal::TokenWrong => HttpResponse::Unauthorized()
                .insert_header((
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"pua-xmpp\", error=\"invalid_token\"",
                ))
                .body("unauthorized: invalid bearer token\n"),
        }
    }
}

impl Access {
    /// Whether anything is checked at all.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.token.is_none()
    }

    /// The decision for one request: `path`, the peer address (`None` if unknown) and the
    /// `Authorization` header value if any.
    pub fn check(
        &self,
        path: &str,
        peer: Option<IpAddr>,
        authorization: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        if path == OPEN_PATH {
            return Ok(());
        }
        if !self.allow.is_empty() {
            match peer {
                Some(ip) if self.allow.iter().any(|c| c.contains(ip)) => {}
                _ => return Err(Refusal::Address),
            }
        }
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = authorization
            .and_then(bearer)
            .ok_or(Refusal::TokenMissing)?;
        if constant_time_eq(presented, token.0.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::TokenWrong)
        }
    }
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, RFC 7235 §2.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The actix-web middleware applying the [`Access`] in the app data.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let decision = match req.app_data::<actix_web::web::Data<Access>>() {
        Some(access) => access.check(
            req.path(),
            req.peer_addr().map(|a| a.ip()),
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        ),
        None => Ok(()),
    };
    match decision {
        Ok(()) => Ok(next.call(req).await?.map_into_boxed_body()),
        Err(refusal) => {
            let peer = req
                .peer_addr()
                .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
            tracing::warn!(
                %peer,
                method = %req.method(),
                path = %req.path(),
                reason = refusal.text(),
                "HTTP request refused"
            );
            metrics::counter!(REFUSALS, "reason" => refusal.label()).increment(1);
            Ok(req.into_response(refusal.response()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped peer");
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("127.0.0.12").unwrap();
        assert!(one.contains(ip("127.0.0.12")));
        assert!(!one.contains(ip("127.0.0.1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        let any4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any4.contains(ip("192.0.2.1")));
        assert!(!any4.contains(ip("2001:db8::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert_eq!(
            Cidr::parse("10.1.2.3/8").unwrap_err(),
            "\"10.1.2.3/8\" has host bits set (did you mean 10.0.0.0/8?)"
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("2001:db8::/129").is_err());
        assert!(Cidr::parse("localhost").is_err());
        assert!(Cidr::parse("10.0.0.0/").is_err());
    }

    #[test]
    fn token_syntax() {
        assert_eq!(check_token("abcdefghijklmnop"), Ok(()));
        assert_eq!(check_token("aB3-._~+/xyzxyzxyz=="), Ok(()));
        assert!(check_token("short").is_err());
        assert!(check_token("has space in it 0123").is_err());
        assert!(check_token("================").is_err());
        assert!(check_token("quote\"quote\"quote\"").is_err());
        let e = check_token("secret-but-bad\"chars").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(!constant_time_eq(b"abcabc", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn decisions() {
        let a = Access {
            allow: vec![Cidr::parse("127.0.0.12").unwrap()],
            token: Some(Secret("0123456789abcdef".into())),
        };
        let lo = Some(ip("127.0.0.12"));
        let other = Some(ip("127.0.0.1"));
        assert_eq!(a.check("/health", other, None), Ok(()));
        assert_eq!(a.check("/metrics", other, None), Err(Refusal::Address));
        assert_eq!(a.check("/metrics", None, None), Err(Refusal::Address));
        assert_eq!(a.check("/metrics", lo, None), Err(Refusal::TokenMissing));
        assert_eq!(
            a.check("/metrics", lo, Some(b"Bearer 0123456789abcdeX")),
            Err(Refusal::TokenWrong)
        );
        assert_eq!(
            a.check("/metrics", lo, Some(b"Basic 0123456789abcdef")),
            Err(Refusal::TokenMissing)
        );
        assert_eq!(
            a.check("/metrics", lo, Some(b"Bearer0123456789abcdef")),
            Err(Refusal::TokenMissing)
        );
        assert_eq!(
            a.check("/metrics", lo, Some(b"bearer  0123456789abcdef ")),
            Ok(())
        );
        assert_eq!(
            a.check("/health/x", lo, Some(b"Bearer nope")),
            Err(Refusal::TokenWrong)
        );
        assert!(Access::default().is_open());
        assert_eq!(Access::default().check("/metrics", None, None), Ok(()));
        assert!(!format!("{a:?}").contains("0123456789abcdef"));
    }
}
