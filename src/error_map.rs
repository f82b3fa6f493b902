//! SIP status codes ⇄ XMPP stanza error conditions (§3.4, RFC 7247 tables, §4.8, §5.4).

use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

/// The default error `type` of a condition (RFC 6120 §8.3.3).
pub fn default_error_type(c: &DefinedCondition) -> ErrorType {
    use DefinedCondition as C;
    match c {
        C::BadRequest | C::JidMalformed | C::NotAcceptable | C::PolicyViolation | C::Redirect { .. } => {
            ErrorType::Modify
        }
        C::Forbidden | C::NotAuthorized | C::RegistrationRequired | C::SubscriptionRequired => ErrorType::Auth,
        C::RecipientUnavailable | C::RemoteServerTimeout | C::ResourceConstraint | C::UnexpectedRequest => {
            ErrorType::Wait
        }
        _ => ErrorType::Cancel,
    }
}
