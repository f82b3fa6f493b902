//! Typed values of the headers rsip 0.4 leaves untyped: `Event` (with `id`) and
//! `Subscription-State` (RFC 6665 §8.2.3 / §4.1.3).

use super::parse::trim;

/// `Event: package;id=x`. Packages compare case-sensitively (RFC 6665 §8.2.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    pub package: String,
    pub id: Option<String>,
}

/// The substate of a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubState {
    Active,
    Pending,
    Terminated,
    /// An extension value; RFC 6665 says treat it like `pending`... but we keep it visible.
    Other(String),
}

/// `Subscription-State: terminated;reason=probation;retry-after=120`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionState {
    pub state: SubState,
    /// Lowercased event-reason token (`deactivated`, `probation`, `rejected`, `timeout`,
    /// `giveup`, `noresource`, `invariant` or an extension).
    pub reason: Option<String>,
    pub expires: Option<u32>,
    pub retry_after: Option<u32>,
}

/// Splits `value;p1=v1;p2` into the first item and an iterator of `(name, value)` pairs, both
/// trimmed. Values may be quoted strings; the quotes are removed.
fn split_params(s: &str) -> (&str, impl Iterator<Item = (&str, Option<&str>)>) {
    let mut parts = Semis(Some(s));
    let first = trim(parts.next().unwrap_or(""));
    let params = parts.filter_map(|p| {
        let p = trim(p);
        if p.is_empty() {
            return None;
        }
        let eq = p.bytes().position(|b| b == b'=');
        match eq.and_then(|i| Some((p.get(..i)?, p.get(i + 1..)?))) {
            Some((n, v)) => {
                let v = trim(v);
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                Some((trim(n), Some(v)))
            }
            None => Some((p, None)),
        }
    });
    (first, params)
}

/// `str::split(';')` by a byte loop: the pieces are a few octets, shorter than the set-up of
/// the searcher `split` uses.
struct Semis<'a>(Option<&'a str>);

impl<'a> Iterator for Semis<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b';') {
            Some(i) => {
                self.0 = rest.get(i + 1..);
                rest.get(..i)
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// RFC 3261 `token` characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
                )
        })
}

fn parse_delta(name: &str, v: Option<&str>) -> Result<u32, String> {
    let v = v.unwrap_or("");
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad {name} value {v:?}"));
    }
    // RFC 3261 §20.19: delta-seconds above 2^32-1 are taken as 2^32-1.
    Ok(v.parse::<u32>().unwrap_or(u32::MAX))
}

impl Event {
    /// Parses an `Event` header value (`presence;id=7`). Unknown parameters are ignored; the
    /// package keeps its case because packages compare case-sensitively.
    pub fn parse(s: &str) -> Result<Event, String> {
        let (package, params) = split_params(s);
        if !is_token(package) {
            return Err(format!("bad event package {package:?}"));
        }
        let mut id = None;
        for (name, value) in params {
            if name.eq_ignore_ascii_case("id") {
                match value {
                    Some(v) if !v.is_empty() => id = Some(v.to_owned()),
                    _ => return Err("empty Event id".to_owned()),
                }
            }
        }
        Ok(Event {
            package: package.to_owned(),
            id,
        })
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.package)?;
        if let Some(id) = &self.id {
            write!(f, ";id={id}")?;
        }
        Ok(())
    }
}

impl SubState {
    pub fn as_str(&self) -> &str {
        match self {
            SubState::Active => "active",
            SubState::Pending => "pending",
            SubState::Terminated => "terminated",
            SubState::Other(s) => s,
        }
    }
}

impl SubscriptionState {
    /// Parses a `Subscription-State` value. The state token and reason compare
    /// case-insensitively (both are lowercased); unknown parameters are ignored; a malformed
    /// `expires` or `retry-after` is an error (the NOTIFY gets a 400).
    pub fn parse(s: &str) -> Result<SubscriptionState, String> {
        let (state, params) = split_params(s);
        if !is_token(state) {
            return Err(format!("bad subscription state {state:?}"));
        }
        let state = if state.eq_ignore_ascii_case("active") {
            SubState::Active
        } else if state.eq_ignore_ascii_case("pending") {
            SubState::Pending
        } else if state.eq_ignore_ascii_case("terminated") {
            SubState::Terminated
        } else {
            SubState::Other(state.to_ascii_lowercase())
        };
        let mut out = SubscriptionState {
            state,
            reason: None,
            expires: None,
            retry_after: None,
        };
        for (name, value) in params {
            if name.eq_ignore_ascii_case("reason") {
                match value {
                    Some(v) if is_token(v) => out.reason = Some(v.to_ascii_lowercase()),
                    _ => return Err(format!("bad reason {:?}", value.unwrap_or(""))),
                }
            } else if name.eq_ignore_ascii_case("expires") {
                out.expires = Some(parse_delta("expires", value)?);
            } else if name.eq_ignore_ascii_case("retry-after") {
                out.retry_after = Some(parse_delta("retry-after", value)?);
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for SubscriptionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.state.as_str())?;
        if let Some(r) = &self.reason {
            write!(f, ";reason={r}")?;
        }
        if let Some(e) = self.expires {
            write!(f, ";expires={e}")?;
        }
        if let Some(r) = self.retry_after {
            write!(f, ";retry-after={r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn semis_are_str_split(s in "[a;=é \t]{0,24}") {
            let ours: Vec<&str> = Semis(Some(&s)).collect();
            let theirs: Vec<&str> = s.split(';').collect();
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn semis_split_as_str_split() {
        for s in ["", ";", "a", "a;b", ";a;;b;", "é;x=é;", "a;b=c;d"] {
            let ours: Vec<&str> = Semis(Some(s)).collect();
            let theirs: Vec<&str> = s.split(';').collect();
            assert_eq!(ours, theirs, "{s:?}");
        }
    }

    #[test]
    fn event_with_id_round_trips() {
        let e = Event::parse(" presence ; id=7 ;foo=bar").unwrap();
        assert_eq!(
            e,
            Event {
                package: "presence".into(),
                id: Some("7".into())
            }
        );
        assert_eq!(e.to_string(), "presence;id=7");
        assert_eq!(
            Event::parse("presence.winfo").unwrap().to_string(),
            "presence.winfo"
        );
    }

    #[test]
    fn event_package_keeps_case_and_rejects_garbage() {
        assert_eq!(Event::parse("Presence").unwrap().package, "Presence");
        assert_eq!(Event::parse(""), Err("bad event package \"\"".to_owned()));
        assert_eq!(
            Event::parse("pre sence"),
            Err("bad event package \"pre sence\"".to_owned())
        );
        assert_eq!(
            Event::parse("presence;id="),
            Err("empty Event id".to_owned())
        );
    }

    #[test]
    fn subscription_state_active_expires() {
        let s = SubscriptionState::parse("active;expires=600").unwrap();
        assert_eq!(
            s,
            SubscriptionState {
                state: SubState::Active,
                reason: None,
                expires: Some(600),
                retry_after: None
            }
        );
        assert_eq!(s.to_string(), "active;expires=600");
    }

    #[test]
    fn case_078_probation_retry_after() {
        let s =
            SubscriptionState::parse("Terminated; Reason=Probation ;retry-after=120;x=y").unwrap();
        assert_eq!(
            s,
            SubscriptionState {
                state: SubState::Terminated,
                reason: Some("probation".into()),
                expires: None,
                retry_after: Some(120)
            }
        );
        assert_eq!(s.to_string(), "terminated;reason=probation;retry-after=120");
        assert_eq!(
            SubscriptionState::parse("terminated;reason=timeout")
                .unwrap()
                .to_string(),
            "terminated;reason=timeout"
        );
    }

    #[test]
    fn subscription_state_extension_and_errors() {
        assert_eq!(
            SubscriptionState::parse("Waiting").unwrap().state,
            SubState::Other("waiting".into())
        );
        assert_eq!(
            SubscriptionState::parse("active;expires=abc"),
            Err("bad expires value \"abc\"".to_owned())
        );
        assert_eq!(
            SubscriptionState::parse("active;expires=-1"),
            Err("bad expires value \"-1\"".to_owned())
        );
        assert_eq!(
            SubscriptionState::parse("terminated;retry-after"),
            Err("bad retry-after value \"\"".to_owned())
        );
        assert_eq!(
            SubscriptionState::parse(""),
            Err("bad subscription state \"\"".to_owned())
        );
        assert_eq!(
            SubscriptionState::parse("active;expires=99999999999")
                .unwrap()
                .expires,
            Some(u32::MAX)
        );
    }
}
