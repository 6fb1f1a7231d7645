//! Queues in Redis: how jobs arrive and how a worker claims and releases them.
//!
//! A queue `<q>` is a Redis stream `dockhand:{<q>}:jobs` read through the consumer
//! group [`GROUP`]. Redis Streams keep, per group, a pending entries list (PEL): an
//! entry read with `XREADGROUP ... >` stays pending for the consumer that read it
//! until that consumer acknowledges it. Dockhand's invariants on top of that:
//!
//! - An entry is acknowledged (and deleted) only after its job's terminal state is
//!   written, so a crash before that leaves it pending, never lost.
//! - The list `dockhand:{<q>}:inbox` (for `LPUSH` producers) is moved into the stream
//!   by one Lua script per batch: `RPOP` and `XADD` happen in one atomic step, so an
//!   entry is never in both places or in neither, whatever dies when.
//! - The group is created at id `0` (so entries added before any worker existed are
//!   served) and re-created whenever Redis answers `NOGROUP` (e.g. after a restart
//!   without persistence).
//! - Acknowledging checks that this consumer still holds the entry ([`lease`] says
//!   how entries move between workers).
//! - A queue named in the set `dockhand:paused` is not read by any worker; its
//!   entries stay where they are until it is resumed (an entry read in the moment
//!   of the pause still runs).
//! - Periodic schedules ([`cron`]) add each tick's job to its queue's stream once,
//!   as a producer would, whatever number of workers make the pass.
//! - Acknowledged entries are deleted from the stream, so the stream holds only work
//!   not yet finished and a re-created group cannot replay finished jobs.

pub mod cron;
mod entry;
mod intake;
mod keys;
pub mod lanes;
pub mod lease;
pub mod schedule;

pub use entry::Entry;
pub use intake::{ack, ensure_groups, move_inbox, paused, read, wait_inbox, ReadError};
pub use keys::Keys;
pub use schedule::{move_due, new_token, requeue};

/// The consumer group every worker of every queue reads through.
pub const GROUP: &str = "workers";
