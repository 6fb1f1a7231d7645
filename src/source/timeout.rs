//! libgit2's network timeouts (connect, and each read or write once connected).
//!
//! libgit2 keeps one value per process, read by every connection it opens, and
//! setting it is not synchronised with those reads. Each [`super::GitCache`] is
//! given its own value (the worker's `worker.git_timeout_seconds`), and runs each
//! network step through [`with`] here.
//!
//! Invariants:
//! - A network step runs only while libgit2 holds the value it asked for.
//! - The value is changed only while no network step runs: steps asking for the
//!   value in force run together; a step asking for another waits for them to end.
//!   One worker per process (the usual case) never waits.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

struct State {
    /// The value libgit2 holds, once one was set.
    value: Option<Duration>,
    /// Network steps running under it.
    running: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    value: None,
    running: 0,
});
static ENDED: Condvar = Condvar::new();

/// Runs `step` (blocking: call it inside `spawn_blocking`) while libgit2's network
/// timeouts are `timeout`.
pub(super) fn with<T>(timeout: Duration, step: impl FnOnce() -> T) -> T {
    {
        let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
        while state.running > 0 && state.value != Some(timeout) {
            state = ENDED.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.value != Some(timeout) {
            set(timeout);
            state.value = Some(timeout);
        }
        state.running += 1;
    }
    // Counted down even if `step` panics, so no other step waits for ever.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
            state.running -= 1;
            if state.running == 0 {
                ENDED.notify_all();
            }
        }
    }
    let _running = Running;
    step()
}

fn set(timeout: Duration) {
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: git2 asks that no other libgit2 call read these options meanwhile.
    // Only network steps read them, and every network step of this process runs
    // through `with`, which calls this only while none is running.
    let set = unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms)
            .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(ms))
    };
    if let Err(e) = set {
        tracing::warn!(error = %e, "libgit2 refused the network timeout; a stalled git server may hold a job");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn steps_with_another_value_never_overlap() {
        // Threads alternate between two values; a step records the value it runs
        // under, and no step of one value may run while one of the other does.
        let under = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let under = under.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let (mine, other) = (i % 2, 1 - i % 2);
                        let ms = 1000 + mine as u64;
                        with(Duration::from_millis(ms), || {
                            under[mine].fetch_add(1, Ordering::SeqCst);
                            assert_eq!(under[other].load(Ordering::SeqCst), 0);
                            std::thread::yield_now();
                            under[mine].fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(STATE.lock().unwrap().running, 0);
    }
}
