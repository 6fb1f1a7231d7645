//! Where the job's data transfers (`crate::transfer`) meet its container: the
//! named pipes of streamed inputs become bind mounts of the container.
//!
//! Invariant: a pipe is mounted read-only, at `/dockhand/input/<path>` only,
//! from a folder the worker made for this run; nothing else of the worker's
//! host is mounted.

use crate::transfer::Transfers;
use bollard::models::ContainerCreateBody;

/// Adds the streamed inputs' pipes to the container's mounts.
pub(super) fn add_mounts(body: &mut ContainerCreateBody, transfers: &Transfers) {
    let pipes = transfers.mounts();
    if pipes.is_empty() {
        return;
    }
    let host = body.host_config.get_or_insert_with(Default::default);
    host.mounts.get_or_insert_with(Vec::new).extend(pipes);
}
