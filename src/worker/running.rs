//! The entries this worker process is running, and how to stop one early.
//!
//! A std `Mutex` because nothing is awaited while it is held. An entry is
//! registered from the moment it is claimed until its pipeline ends (the guard's
//! drop), so the heartbeat renews it and the orphan sweep leaves its container alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Why a running job is being stopped before it ends by itself. The first cause wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// `dockhand cancel`: the job ends `aborted` / `cancelled`.
    Cancelled,
    /// The worker is shutting down: the job goes back to its queue.
    Drain,
    /// The worker lost its lease: another worker may own the job; write nothing.
    Fenced,
}

struct Job {
    /// The stream the entry is in (its queue's lane).
    stream: String,
    job_id: Option<String>,
    queue: String,
    /// The limit key whose slot the job holds while it runs (see `crate::limits`).
    limit: Option<String>,
    stop: CancellationToken,
    cause: Option<StopCause>,
}

#[derive(Clone, Default)]
pub struct Running {
    jobs: Arc<Mutex<HashMap<String, Job>>>,
}

/// Held by a pipeline; deregisters its entry when dropped.
pub struct Registration {
    running: Running,
    entry: String,
    pub stop: CancellationToken,
}

impl Registration {
    /// Records the job (its queue and id) once the entry has been parsed.
    pub fn set_job(&self, queue: &str, id: &str) {
        if let Some(job) = self.running.lock().get_mut(&self.entry) {
            job.job_id = Some(id.to_string());
            job.queue = queue.to_string();
        }
    }

    /// Records (or, with `None`, forgets) the limit slot the job holds, so the
    /// heartbeat renews it.
    pub fn set_limit(&self, key: Option<&str>) {
        if let Some(job) = self.running.lock().get_mut(&self.entry) {
            job.limit = key.map(str::to_string);
        }
    }

    /// Why the job was stopped, if it was.
    pub fn cause(&self) -> Option<StopCause> {
        self.running.lock().get(&self.entry).and_then(|j| j.cause)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.running.lock().remove(&self.entry);
    }
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        // A panic elsewhere while holding the lock leaves a usable map; keep going.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, stream: &str, entry: &str) -> Registration {
        let stop = CancellationToken::new();
        self.lock().insert(
            entry.to_string(),
            Job {
                stream: stream.to_string(),
                job_id: None,
                queue: String::new(),
                limit: None,
                stop: stop.clone(),
                cause: None,
            },
        );
        Registration {
            running: self.clone(),
            entry: entry.to_string(),
            stop,
        }
    }

    pub fn is_running(&self, entry: &str) -> bool {
        self.lock().contains_key(entry)
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Entries per stream, for renewing their leases.
    pub fn by_stream(&self) -> HashMap<String, Vec<String>> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (entry, job) in self.lock().iter() {
            map.entry(job.stream.clone())
                .or_default()
                .push(entry.clone());
        }
        map
    }

    /// The limit slots held now: `(key, job id)`.
    pub fn limit_slots(&self) -> Vec<(String, String)> {
        self.lock()
            .values()
            .filter_map(|j| Some((j.limit.clone()?, j.job_id.clone()?)))
            .collect()
    }

    pub fn job_ids(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter_map(|j| j.job_id.clone())
            .collect()
    }

    /// The jobs running now: `(queue, id)`.
    pub fn jobs(&self) -> Vec<(String, String)> {
        self.lock()
            .values()
            .filter_map(|j| Some((j.queue.clone(), j.job_id.clone()?)))
            .collect()
    }

    pub fn stop_entry(&self, entry: &str, cause: StopCause) {
        if let Some(job) = self.lock().get_mut(entry) {
            job.cause.get_or_insert(cause);
            job.stop.cancel();
        }
    }

    /// Stops job `job_id` (of `queue`, when given: ids are unique per queue).
    pub fn stop_job(&self, queue: Option<&str>, job_id: &str, cause: StopCause) -> bool {
        let mut found = false;
        for job in self
            .lock()
            .values_mut()
            .filter(|j| j.job_id.as_deref() == Some(job_id) && queue.is_none_or(|q| q == j.queue))
        {
            job.cause.get_or_insert(cause);
            job.stop.cancel();
            found = true;
        }
        found
    }

    pub fn stop_all(&self, cause: StopCause) {
        for job in self.lock().values_mut() {
            job.cause.get_or_insert(cause);
            job.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cause_wins_and_drop_deregisters() {
        let running = Running::default();
        let reg = running.register("q", "1-0");
        reg.set_job("q", "j1");
        assert_eq!(running.by_stream()["q"], vec!["1-0".to_string()]);
        assert!(!running.stop_job(Some("other"), "j1", StopCause::Cancelled));
        assert!(running.stop_job(Some("q"), "j1", StopCause::Cancelled));
        running.stop_all(StopCause::Drain);
        assert_eq!(reg.cause(), Some(StopCause::Cancelled));
        assert!(reg.stop.is_cancelled());
        drop(reg);
        assert!(running.is_empty());
        assert!(!running.stop_job(None, "j1", StopCause::Cancelled));
    }
}
