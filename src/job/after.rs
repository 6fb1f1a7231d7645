//! The spec's `after`, `after_policy`, `batch` and `batch_size`, checked: one
//! small step each, naming the field at fault.
//!
//! Invariants:
//! - A job never names itself in `after` (a longer cycle is ended by the wait's
//!   timeout, `jobs.dependency_wait_seconds`, since only Redis sees the graph).
//! - Every parent is a valid job reference (`<id>` in the job's own queue, or
//!   `<queue>/<id>`), named once; a batch id is a valid job id too, so that it
//!   can sit in a key (`<prefix>:batch:{<id>}`) as it is.

use super::{is_valid_job_id, JobRef, JobSpec, Rejection};

/// The most parents one job may wait for: each is a key in the step that
/// registers the wait.
pub const MAX_PARENTS: usize = 256;

/// When a job's wait for its parents is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPolicy {
    /// Every parent completed; a parent that ends otherwise aborts the job.
    AllCompleted,
    /// Every parent ended, however it ended.
    AllFinished,
}

impl AfterPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterPolicy::AllCompleted => "all_completed",
            AfterPolicy::AllFinished => "all_finished",
        }
    }
}

/// A job's parents and the rule for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub parents: Vec<JobRef>,
    pub policy: AfterPolicy,
}

impl After {
    /// [`after`]: the spec's parents and policy, checked.
    pub fn of(spec: &JobSpec, job: &JobRef) -> Result<Option<After>, Rejection> {
        after(spec, job)
    }
}

/// The job's `after` (`None` when it waits for nothing) with its policy.
pub fn after(spec: &JobSpec, job: &JobRef) -> Result<Option<After>, Rejection> {
    let policy = match spec.after_policy.as_deref() {
        None | Some("all_completed") => AfterPolicy::AllCompleted,
        Some("all_finished") => AfterPolicy::AllFinished,
        Some(other) => {
            return Err(Rejection::invalid(
                "after_policy",
                format!("{other:?} is not a policy (all_completed or all_finished)"),
            ))
        }
    };
    if spec.after.is_empty() {
        return Ok(None);
    }
    if spec.after.len() > MAX_PARENTS {
        return Err(Rejection::invalid(
            "after",
            format!("names {} jobs; at most {MAX_PARENTS}", spec.after.len()),
        ));
    }
    let mut parents: Vec<JobRef> = Vec::with_capacity(spec.after.len());
    for (i, text) in spec.after.iter().enumerate() {
        let field = format!("after[{i}]");
        let Some(parent) = JobRef::parse(text, &job.queue) else {
            return Err(Rejection::invalid(
                &field,
                format!(
                    "{text:?} is not a job id ([A-Za-z0-9_.-], 1 to 128 characters; no `:`), \
                     nor <queue>/<id>"
                ),
            ));
        };
        let parent = &parent;
        if parent == job {
            return Err(Rejection::invalid(
                &field,
                format!("{text:?} is this job itself: it would wait for ever"),
            ));
        }
        if parents.contains(parent) {
            return Err(Rejection::invalid(
                &field,
                format!("{text:?} is named twice"),
            ));
        }
        parents.push(parent.clone());
    }
    Ok(Some(After { parents, policy }))
}

/// `batch` is a valid id, and `batch_size` comes with a batch and is at least 1.
pub fn batch(spec: &JobSpec) -> Result<(), Rejection> {
    match (&spec.batch, spec.batch_size) {
        (Some(b), _) if !is_valid_job_id(b) => Err(Rejection::invalid(
            "batch",
            format!("{b:?} is not a batch id ([A-Za-z0-9_.-], 1 to 128 characters; no `:`)"),
        )),
        (None, Some(_)) => Err(Rejection::invalid("batch_size", "is given without `batch`")),
        (_, Some(0)) => Err(Rejection::invalid("batch_size", "must be at least 1")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> JobSpec {
        serde_json::from_str(json).unwrap()
    }

    fn c() -> JobRef {
        JobRef::new("q", "c")
    }

    #[test]
    fn parents_are_ids_named_once_and_never_the_job_itself() {
        let a = after(&spec(r#"{"after":["a","b"]}"#), &c())
            .unwrap()
            .unwrap();
        assert_eq!(a.parents, [JobRef::new("q", "a"), JobRef::new("q", "b")]);
        let other = after(&spec(r#"{"after":["a","p/a"]}"#), &c())
            .unwrap()
            .unwrap();
        assert_eq!(
            other.parents,
            [JobRef::new("q", "a"), JobRef::new("p", "a")]
        );
        let same = after(&spec(r#"{"after":["a","q/a"]}"#), &c()).unwrap_err();
        assert!(same.message.contains("named twice"), "{}", same.message);
        assert_eq!(a.policy, AfterPolicy::AllCompleted);
        assert_eq!(after(&spec("{}"), &c()).unwrap(), None);
        let own = after(&spec(r#"{"after":["c"]}"#), &c()).unwrap_err();
        assert!(own.message.starts_with("`after[0]`"), "{}", own.message);
        let twice = after(&spec(r#"{"after":["a","a"]}"#), &c()).unwrap_err();
        assert!(twice.message.starts_with("`after[1]`"), "{}", twice.message);
        let bad = after(&spec(r#"{"after":["x:y"]}"#), &c()).unwrap_err();
        assert!(bad.message.contains("not a job id"), "{}", bad.message);
        let policy = after(&spec(r#"{"after":["a"],"after_policy":"any"}"#), &c()).unwrap_err();
        assert!(
            policy.message.starts_with("`after_policy`"),
            "{}",
            policy.message
        );
        let fin = after(
            &spec(r#"{"after":["a"],"after_policy":"all_finished"}"#),
            &c(),
        );
        assert_eq!(fin.unwrap().unwrap().policy, AfterPolicy::AllFinished);
    }

    #[test]
    fn a_batch_size_needs_a_batch_and_is_positive() {
        assert!(batch(&spec(r#"{"batch":"b1","batch_size":3}"#)).is_ok());
        assert!(batch(&spec(r#"{"batch":"b1"}"#)).is_ok());
        let alone = batch(&spec(r#"{"batch_size":3}"#)).unwrap_err();
        assert!(alone.message.starts_with("`batch_size`"));
        assert!(batch(&spec(r#"{"batch":"b1","batch_size":0}"#)).is_err());
        assert!(batch(&spec(r#"{"batch":"a b"}"#)).is_err());
    }
}
