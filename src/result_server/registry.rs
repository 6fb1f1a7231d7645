//! The open result URLs: token → the job they belong to and what it posted.
//!
//! A std `Mutex`, because nothing is awaited while it is held: every operation
//! is one map lookup. A slot goes `Waiting` → `Answered` exactly once, under
//! the lock, so of two POSTs racing to one registration only one wins.
//!
//! Each slot also counts the requests to its URLs in progress: [`Registry::enter`]
//! hands out at most `max` [`Entered`] guards at once per token, so one job
//! cannot hold more than that many of the server's connections with its token.

use super::progress::Progress;
use super::{Posted, ResultsError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Default)]
pub(crate) struct Registry {
    slots: Mutex<HashMap<String, Slot>>,
}

struct Slot {
    job_id: String,
    limit_bytes: u64,
    /// `None` while waiting; `Some(None)` once the post was taken.
    answer: Option<Option<Posted>>,
    /// Requests to this job's URLs in progress (live [`Entered`] guards).
    active: usize,
    /// The job's last progress report; the registration holds the receiver.
    /// A watch keeps only the latest, so a job posting faster than the worker
    /// writes costs no memory.
    progress: watch::Sender<Option<Progress>>,
}

/// One request in progress on a job's URLs; dropping it frees its place.
pub(crate) struct Entered {
    registry: Arc<Registry>,
    token: String,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(slot) = self.registry.lock().get_mut(&self.token) {
            slot.active = slot.active.saturating_sub(1);
        }
    }
}

/// What a token leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Open {
        job_id: String,
        limit_bytes: u64,
    },
    /// A POST was already accepted.
    Answered,
    /// Never registered, or unregistered.
    Missing,
}

impl Registry {
    /// Registers a job and returns its new token (128 random bits, in hex) and
    /// where its progress reports arrive.
    pub(crate) fn insert(
        &self,
        job_id: &str,
        limit_bytes: u64,
    ) -> Result<(String, watch::Receiver<Option<Progress>>), ResultsError> {
        let mut bits = [0u8; 16];
        getrandom::fill(&mut bits)
            .map_err(|e| ResultsError::Random(std::io::Error::other(e.to_string())))?;
        let token = hex::encode(bits);
        let (progress, reports) = watch::channel(None);
        let slot = Slot {
            job_id: job_id.to_string(),
            limit_bytes,
            answer: None,
            active: 0,
            progress,
        };
        self.lock().insert(token.clone(), slot);
        Ok((token, reports))
    }

    /// The job a token belongs to while it is registered, answered or not:
    /// progress may be reported until the job is over.
    pub(crate) fn job_of(&self, token: &str) -> Option<String> {
        self.lock().get(token).map(|slot| slot.job_id.clone())
    }

    /// Hands a progress report to the job's registration; false when the token
    /// is not registered (any more).
    pub(crate) fn report(&self, token: &str, progress: Progress) -> bool {
        match self.lock().get(token) {
            Some(slot) => {
                slot.progress.send_replace(Some(progress));
                true
            }
            None => false,
        }
    }

    pub(crate) fn lookup(&self, token: &str) -> Lookup {
        match self.lock().get(token) {
            None => Lookup::Missing,
            Some(Slot {
                answer: Some(_), ..
            }) => Lookup::Answered,
            Some(slot) => Lookup::Open {
                job_id: slot.job_id.clone(),
                limit_bytes: slot.limit_bytes,
            },
        }
    }

    /// Keeps `posted` if the slot is still waiting; otherwise says why not
    /// (`Answered` or `Missing`) and drops it.
    pub(crate) fn commit(&self, token: &str, posted: Posted) -> Result<(), Lookup> {
        match self.lock().get_mut(token) {
            None => Err(Lookup::Missing),
            Some(Slot {
                answer: Some(_), ..
            }) => Err(Lookup::Answered),
            Some(slot) => {
                slot.answer = Some(Some(posted));
                Ok(())
            }
        }
    }

    /// Counts one more request in progress on `token`'s URLs, unless `max` are
    /// already; `None` then. A token that is not registered (any more) gets a
    /// guard that counts nothing: its request ends in a 404 anyway.
    pub(crate) fn enter(self: &Arc<Self>, token: &str, max: usize) -> Option<Entered> {
        if let Some(slot) = self.lock().get_mut(token) {
            if slot.active >= max {
                return None;
            }
            slot.active += 1;
        }
        Some(Entered {
            registry: self.clone(),
            token: token.to_string(),
        })
    }

    pub(crate) fn take(&self, token: &str) -> Option<Posted> {
        self.lock()
            .get_mut(token)
            .and_then(|slot| slot.answer.as_mut())
            .and_then(Option::take)
    }

    pub(crate) fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while the lock was held left the map itself consistent (every
        // operation is a single map call), so a poisoned lock is still usable.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result_server::PostKind;

    fn posted(text: &str) -> Posted {
        Posted {
            kind: PostKind::Response,
            text: Some(text.into()),
            data: None,
            files: Vec::new(),
            dropped: Vec::new(),
        }
    }

    #[test]
    fn the_first_post_wins_and_is_taken_once() {
        let r = Registry::default();
        let (t, _) = r.insert("j1", 10).unwrap();
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            r.lookup(&t),
            Lookup::Open {
                job_id: "j1".into(),
                limit_bytes: 10
            }
        );
        assert_eq!(r.take(&t), None);
        r.commit(&t, posted("first")).unwrap();
        assert_eq!(r.commit(&t, posted("second")), Err(Lookup::Answered));
        assert_eq!(r.take(&t).unwrap().text.as_deref(), Some("first"));
        assert_eq!(r.take(&t), None);
        // Taken is still answered: a late POST is a conflict, not a new result.
        assert_eq!(r.lookup(&t), Lookup::Answered);
        r.remove(&t);
        assert_eq!(r.lookup(&t), Lookup::Missing);
        assert_eq!(r.commit(&t, posted("late")), Err(Lookup::Missing));
    }

    #[test]
    fn at_most_max_requests_per_token_at_once() {
        let r = Arc::new(Registry::default());
        let (t, _) = r.insert("j", 1).unwrap();
        let (other, _) = r.insert("k", 1).unwrap();
        let a = r.enter(&t, 2).unwrap();
        let _b = r.enter(&t, 2).unwrap();
        assert!(r.enter(&t, 2).is_none(), "a third at once");
        assert!(r.enter(&other, 2).is_some(), "other jobs are not counted");
        drop(a);
        let _c = r.enter(&t, 2).expect("a place was freed");
        // A guard outliving its registration is harmless.
        r.remove(&t);
        drop(_c);
        assert!(r.enter("unknown", 0).is_some());
    }

    #[test]
    fn progress_is_reported_until_unregistered_even_after_a_result() {
        let r = Registry::default();
        let (t, reports) = r.insert("j", 1).unwrap();
        let p = |n| Progress {
            progress: n,
            message: None,
        };
        assert!(r.report(&t, p(0.1)));
        r.commit(&t, posted("done")).unwrap();
        assert_eq!(r.job_of(&t).as_deref(), Some("j"));
        assert!(r.report(&t, p(0.9)));
        assert_eq!(reports.borrow().as_ref().map(|p| p.progress), Some(0.9));
        r.remove(&t);
        assert!(!r.report(&t, p(1.0)));
        assert_eq!(r.job_of(&t), None);
    }

    #[test]
    fn tokens_differ() {
        let r = Registry::default();
        let (a, _) = r.insert("j", 1).unwrap();
        let (b, _) = r.insert("j", 1).unwrap();
        assert_ne!(a, b);
    }
}
