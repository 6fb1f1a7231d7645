//! When a job runs again: the `retry` policy and first-run delays (`delay_seconds`,
//! `run_at`), validated, and the backoff between attempts.

use super::{JobSpec, Reason, Rejection};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The longest a job may be put off, by a delay or a backoff.
const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Backoff base when `retry.backoff_seconds` is not given.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);
/// The ceiling of one backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The outcomes a retry may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    Failed,
    Timeout,
    WorkerLost,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub on: Vec<RetryOn>,
    /// With `failed`: only these exit codes are retried (all when `None`).
    pub exit_codes: Option<Vec<i64>>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: DEFAULT_BACKOFF,
            on: Vec::new(),
            exit_codes: None,
        }
    }
}

impl RetryPolicy {
    /// Whether an attempt that ended with `reason` (and `exit_code`) runs again.
    pub fn retries(&self, attempt: u32, reason: Reason, exit_code: Option<i64>) -> bool {
        if attempt >= self.max_attempts {
            return false;
        }
        let wanted = match reason {
            Reason::ExitCode => RetryOn::Failed,
            Reason::Timeout => RetryOn::Timeout,
            Reason::WorkerLost => RetryOn::WorkerLost,
            _ => return false,
        };
        if !self.on.contains(&wanted) {
            return false;
        }
        match (wanted, &self.exit_codes, exit_code) {
            (RetryOn::Failed, Some(codes), Some(code)) => codes.contains(&code),
            _ => true,
        }
    }

    /// The wait before attempt `attempt + 1`: the base doubled per attempt so far,
    /// capped, with "equal jitter" (half fixed, half random) given as `jitter` in [0, 1).
    pub fn backoff_after(&self, attempt: u32, jitter: f64) -> Duration {
        crate::backoff::delay(self.backoff, MAX_BACKOFF, attempt.saturating_sub(1), jitter)
    }
}

pub(super) fn policy(spec: &JobSpec) -> Result<RetryPolicy, Rejection> {
    let Some(r) = &spec.retry else {
        return Ok(RetryPolicy::default());
    };
    let max_attempts = r.max_attempts.unwrap_or(1);
    if !(1..=100).contains(&max_attempts) {
        return Err(Rejection::invalid(
            "retry.max_attempts",
            format!("must be between 1 and 100 (got {max_attempts})"),
        ));
    }
    let backoff = match r.backoff_seconds {
        None => DEFAULT_BACKOFF,
        Some(s) if s.is_finite() && (0.0..=MAX_BACKOFF.as_secs_f64()).contains(&s) => {
            Duration::from_secs_f64(s)
        }
        Some(s) => {
            return Err(Rejection::invalid(
                "retry.backoff_seconds",
                format!("must be between 0 and 3600 (got {s})"),
            ))
        }
    };
    let names =
        r.on.clone()
            .unwrap_or_else(|| vec!["failed".into(), "timeout".into(), "worker_lost".into()]);
    let mut on = Vec::new();
    for name in &names {
        on.push(match name.as_str() {
            "failed" => RetryOn::Failed,
            "timeout" => RetryOn::Timeout,
            "worker_lost" => RetryOn::WorkerLost,
            other => {
                return Err(Rejection::invalid(
                    "retry.on",
                    format!("{other:?} is not one of \"failed\", \"timeout\", \"worker_lost\""),
                ))
            }
        });
    }
    Ok(RetryPolicy {
        max_attempts,
        backoff,
        on,
        exit_codes: r.exit_codes.clone(),
    })
}

/// When the first run may start, from `delay_seconds` (counted from `created`) or
/// `run_at`; `None` means now.
pub(super) fn first_run(
    spec: &JobSpec,
    created: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Rejection> {
    match (spec.delay_seconds, &spec.run_at) {
        (Some(_), Some(_)) => Err(Rejection::invalid(
            "run_at",
            "give either `delay_seconds` or `run_at`, not both",
        )),
        (Some(d), None) => {
            if Duration::from_secs(d) > MAX_DELAY {
                return Err(Rejection::invalid(
                    "delay_seconds",
                    format!("must be at most {} (30 days)", MAX_DELAY.as_secs()),
                ));
            }
            Ok(Some(created + chrono::Duration::seconds(d as i64)))
        }
        (None, Some(text)) => {
            let at = DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    Rejection::invalid("run_at", format!("{text:?} is not an RFC 3339 time: {e}"))
                })?
                .with_timezone(&Utc);
            if at - created > chrono::Duration::from_std(MAX_DELAY).unwrap_or_default() {
                return Err(Rejection::invalid("run_at", "must be within 30 days"));
            }
            Ok(Some(at))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(json: &str) -> Result<RetryPolicy, Rejection> {
        policy(&super::super::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn retries_only_listed_outcomes_and_only_while_attempts_remain() {
        let p = policy_of(r#"{"retry":{"max_attempts":3,"on":["failed"],"exit_codes":[2,3]}}"#)
            .unwrap();
        assert!(p.retries(1, Reason::ExitCode, Some(3)));
        assert!(
            !p.retries(1, Reason::ExitCode, Some(4)),
            "exit code not listed"
        );
        assert!(!p.retries(1, Reason::Timeout, None), "outcome not listed");
        assert!(!p.retries(3, Reason::ExitCode, Some(3)), "no attempts left");
        assert!(
            !p.retries(1, Reason::Cancelled, None),
            "cancelled is never retried"
        );
        let all = policy_of(r#"{"retry":{"max_attempts":2}}"#).unwrap();
        assert!(all.retries(1, Reason::WorkerLost, None) && all.retries(1, Reason::Timeout, None));
        assert!(!RetryPolicy::default().retries(1, Reason::ExitCode, Some(1)));
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_a_ceiling() {
        let p = policy_of(r#"{"retry":{"max_attempts":5,"backoff_seconds":2}}"#).unwrap();
        assert_eq!(p.backoff_after(1, 0.0), Duration::from_secs(1));
        let mid = p.backoff_after(1, 0.5);
        assert!(
            mid > Duration::from_secs(1) && mid < Duration::from_secs(2),
            "{mid:?}"
        );
        assert_eq!(p.backoff_after(3, 0.0), Duration::from_secs(4));
        assert_eq!(p.backoff_after(40, 1.0), MAX_BACKOFF);
    }

    #[test]
    fn bad_retry_and_delay_fields_are_named() {
        assert!(policy_of(r#"{"retry":{"max_attempts":0}}"#)
            .unwrap_err()
            .message
            .starts_with("`retry.max_attempts`"));
        assert!(policy_of(r#"{"retry":{"on":["sometimes"]}}"#)
            .unwrap_err()
            .message
            .starts_with("`retry.on`"));
        assert!(policy_of(r#"{"retry":{"backoff_seconds":-1}}"#)
            .unwrap_err()
            .message
            .starts_with("`retry.backoff_seconds`"));
        let created = Utc::now();
        let spec = super::super::parse(br#"{"run_at":"tomorrow"}"#).unwrap();
        assert!(first_run(&spec, created)
            .unwrap_err()
            .message
            .starts_with("`run_at`"));
        let spec = super::super::parse(br#"{"delay_seconds":99999999}"#).unwrap();
        assert!(first_run(&spec, created)
            .unwrap_err()
            .message
            .starts_with("`delay_seconds`"));
    }

    #[test]
    fn delays_count_from_submission() {
        let created = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let spec = super::super::parse(br#"{"delay_seconds":90}"#).unwrap();
        assert_eq!(
            first_run(&spec, created).unwrap().unwrap().to_rfc3339(),
            "2026-01-01T00:01:30+00:00"
        );
        let spec = super::super::parse(br#"{"run_at":"2026-01-02T10:00:00+02:00"}"#).unwrap();
        assert_eq!(
            first_run(&spec, created).unwrap().unwrap().to_rfc3339(),
            "2026-01-02T08:00:00+00:00"
        );
    }
}
