//! A job's full name: its queue and its id. A job's keys carry its queue's hash
//! tag (`<prefix>:{<q>}:job:<id>`), so whoever reads or writes them must know
//! the queue; where a person names a job, `<queue>/<id>` says both and a bare
//! id leaves the queue to the context (the job's own queue for `after`, a
//! search of the queues for the commands).
//!
//! Invariant: the text form is unambiguous, because neither a queue name nor a
//! job id may contain `/`.

use super::is_valid_job_id;
use crate::config::is_valid_queue_name;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobRef {
    pub queue: String,
    pub id: String,
}

impl JobRef {
    pub fn new(queue: &str, id: &str) -> JobRef {
        JobRef {
            queue: queue.to_string(),
            id: id.to_string(),
        }
    }

    /// `<queue>/<id>`, or a bare `<id>` in `default_queue`; `None` when either
    /// part is not valid.
    pub fn parse(text: &str, default_queue: &str) -> Option<JobRef> {
        let (queue, id) = text.split_once('/').unwrap_or((default_queue, text));
        (is_valid_queue_name(queue) && is_valid_job_id(id)).then(|| JobRef::new(queue, id))
    }

    /// How a job in `queue` names this one: the bare id when it is in the same
    /// queue, else `<queue>/<id>` ([`JobRef::parse`] reads it back).
    pub fn text_in(&self, queue: &str) -> String {
        if self.queue == queue {
            self.id.clone()
        } else {
            self.to_string()
        }
    }

    /// `<queue>/<id>` or a bare `<id>`: the queue when one is named, and the id.
    /// `None` when a part is not valid.
    pub fn split(text: &str) -> Option<(Option<&str>, &str)> {
        match text.split_once('/') {
            Some((q, id)) => {
                (is_valid_queue_name(q) && is_valid_job_id(id)).then_some((Some(q), id))
            }
            None => is_valid_job_id(text).then_some((None, text)),
        }
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.queue, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_id_takes_the_default_queue_and_the_text_form_round_trips() {
        assert_eq!(JobRef::parse("abc", "q1"), Some(JobRef::new("q1", "abc")));
        let r = JobRef::parse("other/abc", "q1").unwrap();
        assert_eq!(r, JobRef::new("other", "abc"));
        assert_eq!(JobRef::parse(&r.to_string(), "x"), Some(r.clone()));
        assert_eq!(r.text_in("other"), "abc");
        assert_eq!(r.text_in("q1"), "other/abc");
        assert_eq!(JobRef::parse(&r.text_in("q1"), "q1"), Some(r));
        assert_eq!(JobRef::parse("a/b/c", "q1"), None);
        assert_eq!(JobRef::parse("q:1/abc", "q1"), None);
        assert_eq!(JobRef::split("abc"), Some((None, "abc")));
        assert_eq!(JobRef::split("q/abc"), Some((Some("q"), "abc")));
        assert_eq!(JobRef::split("/abc"), None);
    }
}
