//! SIP status codes ⇄ XMPP stanza error conditions (§3.4, RFC 7247 tables, §4.8, §5.4).

use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

/// The default error `type` of a condition (RFC 6120 §8.3.3).
pub fn default_error_type(c: &DefinedCondition) -> ErrorType {
    use DefinedCondition as C;
    match c {
        C::BadRequest
        | C::JidMalformed
        | C::NotAcceptable
        | C::PolicyViolation
        | C::Redirect { .. } => ErrorType::Modify,
        C::Forbidden | C::NotAuthorized | C::RegistrationRequired | C::SubscriptionRequired => {
            ErrorType::Auth
        }
        C::RecipientUnavailable
        | C::RemoteServerTimeout
        | C::ResourceConstraint
        | C::UnexpectedRequest => ErrorType::Wait,
        _ => ErrorType::Cancel,
    }
}

/// Generic SIP final response → XMPP condition (§3.4, RFC 7247 §7.2 as digested).
///
/// `None` for 1xx/2xx (not failures), for 487 (the request was cancelled by us: no stanza)
/// and for codes outside 100–699. `301` gives `gone` and other 3xx `redirect`, both without
/// an address: the caller fills `new_address` from the Contact header.
/// Presence-specific overrides (retry, `unsubscribed`) live in the subscriber (§4.8).
pub fn sip_to_condition(code: u16) -> Option<DefinedCondition> {
    use DefinedCondition as C;
    let c = match code {
        301 => C::Gone { new_address: None },
        380 => C::UndefinedCondition,
        300..=399 => C::Redirect { new_address: None },
        400 | 493 | 415 => C::BadRequest,
        401 | 407 => C::NotAuthorized,
        402 => C::UndefinedCondition,
        403 | 603 => C::Forbidden,
        404 | 604 | 481 | 485 => C::ItemNotFound,
        405 => C::NotAllowed,
        406 | 488 | 606 | 482 | 483 | 505 => C::NotAcceptable,
        408 | 504 => C::RemoteServerTimeout,
        410 => C::Gone { new_address: None },
        413 | 414 | 513 => C::PolicyViolation,
        416 | 484 => C::JidMalformed,
        420 | 421 | 489 | 501 => C::FeatureNotImplemented,
        423 => C::ResourceConstraint,
        480 | 486 | 600 => C::RecipientUnavailable,
        487 => return None,
        491 => C::UnexpectedRequest,
        500 => C::InternalServerError,
        502 => C::RemoteServerNotFound,
        503 => C::ServiceUnavailable,
        400..=699 => C::UndefinedCondition,
        _ => return None,
    };
    Some(c)
}

/// XMPP condition → SIP status, for a SIP transaction still waiting on an XMPP outcome
/// (§3.4, RFC 7247 §7.1 as digested). `gone` with a new address is a permanent move (301),
/// without one the user is gone (410); `unexpected-request` is 491 (request pending).
pub fn condition_to_sip(c: &DefinedCondition) -> u16 {
    use DefinedCondition as C;
    match c {
        C::BadRequest => 400,
        C::Conflict => 400,
        C::FeatureNotImplemented => 501,
        C::Forbidden => 403,
        C::Gone {
            new_address: Some(_),
        } => 301,
        C::Gone { new_address: None } => 410,
        C::InternalServerError => 500,
        C::ItemNotFound => 404,
        C::JidMalformed => 484,
        C::NotAcceptable => 406,
        C::NotAllowed => 405,
        C::NotAuthorized => 401,
        C::PolicyViolation => 403,
        C::RecipientUnavailable => 480,
        C::Redirect { .. } => 302,
        C::RegistrationRequired => 400,
        C::RemoteServerNotFound => 404,
        C::RemoteServerTimeout => 408,
        C::ResourceConstraint => 500,
        C::ServiceUnavailable => 503,
        C::SubscriptionRequired => 400,
        C::UndefinedCondition => 400,
        C::UnexpectedRequest => 491,
    }
}

/// How a bounce of our subscribe/probe ends the SIP watcher's dialog (§5.4 ◆): the
/// `Subscription-State: terminated;reason=<token>[;retry-after=<s>]` to put in the NOTIFY.
/// `noresource`: the XMPP user does not exist; `rejected`: not allowed; `probation` with a
/// retry-after of 300 s: temporary trouble; anything else `deactivated` (the UA re-subscribes).
pub fn reason_for_xmpp_error(c: &DefinedCondition) -> (&'static str, Option<u32>) {
    use DefinedCondition as C;
    match c {
        C::ItemNotFound
        | C::Gone { .. }
        | C::JidMalformed
        | C::RemoteServerNotFound
        | C::ServiceUnavailable => ("noresource", None),
        C::Forbidden
        | C::NotAuthorized
        | C::NotAllowed
        | C::PolicyViolation
        | C::RegistrationRequired
        | C::SubscriptionRequired => ("rejected", None),
        C::RemoteServerTimeout
        | C::RecipientUnavailable
        | C::ResourceConstraint
        | C::InternalServerError => ("probation", Some(300)),
        _ => ("deactivated", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DefinedCondition as C;

    fn gone() -> C {
        C::Gone { new_address: None }
    }
    fn redirect() -> C {
        C::Redirect { new_address: None }
    }

    #[test]
    fn sip_to_condition_every_row() {
        let rows: Vec<(u16, Option<C>)> = vec![
            (100, None),
            (180, None),
            (200, None),
            (202, None),
            (300, Some(redirect())),
            (302, Some(redirect())),
            (305, Some(redirect())),
            (301, Some(gone())),
            (380, Some(C::UndefinedCondition)),
            (400, Some(C::BadRequest)),
            (493, Some(C::BadRequest)),
            (401, Some(C::NotAuthorized)),
            (407, Some(C::NotAuthorized)),
            (402, Some(C::UndefinedCondition)),
            (403, Some(C::Forbidden)),
            (404, Some(C::ItemNotFound)),
            (604, Some(C::ItemNotFound)),
            (405, Some(C::NotAllowed)),
            (406, Some(C::NotAcceptable)),
            (488, Some(C::NotAcceptable)),
            (606, Some(C::NotAcceptable)),
            (408, Some(C::RemoteServerTimeout)),
            (504, Some(C::RemoteServerTimeout)),
            (410, Some(gone())),
            (413, Some(C::PolicyViolation)),
            (414, Some(C::PolicyViolation)),
            (513, Some(C::PolicyViolation)),
            (415, Some(C::BadRequest)),
            (416, Some(C::JidMalformed)),
            (484, Some(C::JidMalformed)),
            (420, Some(C::FeatureNotImplemented)),
            (421, Some(C::FeatureNotImplemented)),
            (489, Some(C::FeatureNotImplemented)),
            (501, Some(C::FeatureNotImplemented)),
            (423, Some(C::ResourceConstraint)),
            (480, Some(C::RecipientUnavailable)),
            (486, Some(C::RecipientUnavailable)),
            (600, Some(C::RecipientUnavailable)),
            (481, Some(C::ItemNotFound)),
            (485, Some(C::ItemNotFound)),
            (482, Some(C::NotAcceptable)),
            (483, Some(C::NotAcceptable)),
            (505, Some(C::NotAcceptable)),
            (487, None),
            (491, Some(C::UnexpectedRequest)),
            (500, Some(C::InternalServerError)),
            (502, Some(C::RemoteServerNotFound)),
            (503, Some(C::ServiceUnavailable)),
            (603, Some(C::Forbidden)),
            (412, Some(C::UndefinedCondition)),
            (580, Some(C::UndefinedCondition)),
            (699, Some(C::UndefinedCondition)),
            (0, None),
            (99, None),
            (700, None),
        ];
        for (code, want) in rows {
            assert_eq!(sip_to_condition(code), want, "SIP {code}");
        }
    }

    #[test]
    fn condition_to_sip_every_row() {
        let rows: Vec<(C, u16)> = vec![
            (C::BadRequest, 400),
            (C::Conflict, 400),
            (C::FeatureNotImplemented, 501),
            (C::Forbidden, 403),
            (
                C::Gone {
                    new_address: Some("xmpp:romeo@example.org".into()),
                },
                301,
            ),
            (gone(), 410),
            (C::InternalServerError, 500),
            (C::ItemNotFound, 404),
            (C::JidMalformed, 484),
            (C::NotAcceptable, 406),
            (C::NotAllowed, 405),
            (C::NotAuthorized, 401),
            (C::PolicyViolation, 403),
            (C::RecipientUnavailable, 480),
            (redirect(), 302),
            (C::RegistrationRequired, 400),
            (C::RemoteServerNotFound, 404),
            (C::RemoteServerTimeout, 408),
            (C::ResourceConstraint, 500),
            (C::ServiceUnavailable, 503),
            (C::SubscriptionRequired, 400),
            (C::UndefinedCondition, 400),
            (C::UnexpectedRequest, 491),
        ];
        for (c, want) in rows {
            assert_eq!(condition_to_sip(&c), want, "{c:?}");
        }
    }

    #[test]
    fn reason_for_xmpp_error_every_row() {
        let rows: Vec<(C, (&str, Option<u32>))> = vec![
            (C::ItemNotFound, ("noresource", None)),
            (gone(), ("noresource", None)),
            (C::JidMalformed, ("noresource", None)),
            (C::RemoteServerNotFound, ("noresource", None)),
            (C::ServiceUnavailable, ("noresource", None)),
            (C::Forbidden, ("rejected", None)),
            (C::NotAuthorized, ("rejected", None)),
            (C::NotAllowed, ("rejected", None)),
            (C::PolicyViolation, ("rejected", None)),
            (C::RegistrationRequired, ("rejected", None)),
            (C::SubscriptionRequired, ("rejected", None)),
            (C::RemoteServerTimeout, ("probation", Some(300))),
            (C::RecipientUnavailable, ("probation", Some(300))),
            (C::ResourceConstraint, ("probation", Some(300))),
            (C::InternalServerError, ("probation", Some(300))),
            (C::BadRequest, ("deactivated", None)),
            (C::Conflict, ("deactivated", None)),
            (C::FeatureNotImplemented, ("deactivated", None)),
            (C::NotAcceptable, ("deactivated", None)),
            (redirect(), ("deactivated", None)),
            (C::UndefinedCondition, ("deactivated", None)),
            (C::UnexpectedRequest, ("deactivated", None)),
        ];
        for (c, want) in rows {
            assert_eq!(reason_for_xmpp_error(&c), want, "{c:?}");
        }
    }

    #[test]
    fn default_error_types_unchanged() {
        assert_eq!(default_error_type(&C::ItemNotFound), ErrorType::Cancel);
        assert_eq!(default_error_type(&C::JidMalformed), ErrorType::Modify);
        assert_eq!(default_error_type(&C::NotAuthorized), ErrorType::Auth);
        assert_eq!(default_error_type(&C::RemoteServerTimeout), ErrorType::Wait);
    }
}
