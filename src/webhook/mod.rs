//! Webhooks, per the Standard Webhooks spec: the building blocks of delivery.
//!
//! - [`sign`](mod@sign): `whsec_` secrets, `v1` HMAC-SHA256 signatures and their check (pure).
//! - [`Guard`] (from [`crate::ssrf`]): which addresses a delivery may reach (pure).
//! - [`send`]: one signed POST attempt and its classified outcome.
//! - [`pool`]: open connections kept between attempts, per receiver.
//! - [`subscribers`]: the registry `dockhand:subscribers`.
//! - [`outbox`]: durable deliveries in Redis (made with the job's terminal state).
//! - [`deliver`]: the loop that sends due deliveries and schedules retries.
//!
//! Invariants the pieces keep together: the bytes signed are the bytes sent; a
//! subscriber's URL is untrusted, so no connection is made to an address the
//! guard has not passed; one attempt never retries or follows a redirect, and
//! never panics or returns an error: every failure is recorded in its outcome
//! for the durable queue ([`outbox`]) to act on.

pub mod deliver;
pub mod outbox;
pub mod pool;
pub mod send;
pub mod sign;
pub mod subscribers;
pub mod tls;

pub use crate::ssrf::{Guard, Refused, Rule};
pub use send::{
    attempt, attempt_on, check_url, AttemptOutcome, Connections, Message, Outbound, SendError,
    Target, Verdict,
};
pub use sign::{sign, verify, Secret, SecretError, VerifyError};
pub use subscribers::Subscriber;
