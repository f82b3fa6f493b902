//! Typed values of the headers rsip 0.4 leaves untyped: `Event` (with `id`) and
//! `Subscription-State` (RFC 6665 §8.2.3 / §4.1.3).

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
