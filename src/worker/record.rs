//! Step five of a claimed entry's turn, the parts that need no Redis: what the
//! job's record says once its log is closed. Pure.
//!
//! Invariant: what a job printed or returned is masked like its log lines, so a
//! secret value (`secret_env`) never reaches the job hash or a webhook.

use super::running::StopCause;
use crate::job::Status;
use crate::logs::{LogSummary, Mask};
use crate::state::JobRecord;

/// The system line that says why a running container was stopped.
pub(super) fn why_stopped(cause: StopCause) -> &'static str {
    match cause {
        StopCause::Cancelled => "cancelled by request; the container was stopped",
        StopCause::Drain => "the worker is shutting down; the job goes back to its queue",
        StopCause::Fenced => "this worker lost the job's lease; the container was stopped",
    }
}

/// Adds what the closed log says (its last lines, as many as the writer was told
/// to keep; lines lost) to the record, and masks the secrets in what the job
/// returned.
pub(super) fn close(record: &mut JobRecord, summary: &LogSummary, mask: &Mask) {
    record.log_tail = summary.tail.iter().cloned().collect();
    if !mask.is_empty() {
        record.result_text = record.result_text.as_deref().map(|t| mask.apply(t));
        record.error = record.error.as_deref().map(|t| mask.apply(t));
        record.result_data = record.result_data.take().map(|d| {
            serde_json::from_str(&mask.apply(&d.to_string())).unwrap_or(serde_json::Value::Null)
        });
    }
    if summary.lines_lost > 0 {
        let note = format!(
            "{} log lines could not be stored (Redis unreachable)",
            summary.lines_lost
        );
        record.error = Some(match record.error.take() {
            Some(e) => format!("{e}; {note}"),
            None => note,
        });
    }
}

/// The record of a job going back to its queue: nothing of this run is left (its
/// exit code, start, worker, result or files would read as the job's), only the
/// attempts used so far.
pub(super) fn requeued(mut record: JobRecord) -> JobRecord {
    record.set_status(Status::Queued);
    record.reason = None;
    record.error = None;
    record.started_at = None;
    record.finished_at = None;
    record.worker = None;
    record.exit_code = None;
    record.result_text = None;
    record.result_data = None;
    record.files.clear();
    record.files_dropped.clear();
    record.log_tail.clear();
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Reason;

    #[test]
    fn a_closed_log_masks_secrets_and_says_what_was_lost() {
        let mut record = JobRecord::new("j", "q", "2026-01-01T00:00:00Z".into());
        record.abort(Reason::ExitCode, "token hunter2 refused");
        record.result_data = Some(serde_json::json!({"token": "hunter2"}));
        let summary = LogSummary {
            tail: ["b", "c"].iter().map(|s| s.to_string()).collect(),
            lines_lost: 4,
            ..Default::default()
        };
        close(
            &mut record,
            &summary,
            &Mask::new(["hunter2".to_string()].iter()),
        );
        assert_eq!(record.log_tail, ["b", "c"]);
        assert_eq!(
            record.error.as_deref(),
            Some("token *** refused; 4 log lines could not be stored (Redis unreachable)")
        );
        assert_eq!(
            record.result_data,
            Some(serde_json::json!({"token": "***"}))
        );

        record.exit_code = Some(137);
        record.started_at = Some("2026-01-01T00:00:01Z".into());
        record.worker = Some("w1".into());
        record.attempt = 1;
        let back = requeued(record);
        assert_eq!(
            (back.status, back.reason, back.error),
            (Status::Queued, None, None)
        );
        assert_eq!(
            (back.exit_code, back.started_at, back.worker),
            (None, None, None)
        );
        assert_eq!((back.result_data, back.attempt), (None, 1));
    }
}
