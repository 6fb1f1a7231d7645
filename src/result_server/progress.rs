//! A progress report, `{"progress": 0.42, "message": "frame 84/200"}`: what a job
//! POSTs to `PROGRESS_URL` or writes to `/dockhand/output/progress.json`, and the
//! one set of rules both are checked by (pure, so the worker checks the file with
//! the same code the server checks a POST with).
//!
//! Invariants:
//! - A report has `progress`, a finite number in [0, 1], and at most a `message`,
//!   a string of at most [`MESSAGE_MAX`] bytes. Anything else (another field, a
//!   field given twice, a wrong type, a body that is not one JSON object or form)
//!   is refused with a one-line reason: a report is never half-read.
//! - A body is at most [`PROGRESS_MAX_BYTES`] bytes; parsing one costs time
//!   linear in that.

use serde_json::Value;

/// The most bytes a progress body (a POST, or `progress.json`) may have: room
/// for a 1 KiB message however it is escaped.
pub const PROGRESS_MAX_BYTES: u64 = 8 << 10;
/// The most bytes `message` may have (UTF-8).
pub const MESSAGE_MAX: usize = 1 << 10;

/// One valid progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// In [0, 1].
    pub progress: f64,
    pub message: Option<String>,
}

impl Progress {
    /// A JSON object `{"progress": <number>, "message": <string>}` (`message`
    /// optional, `null` reads as absent).
    pub fn from_json(bytes: &[u8]) -> Result<Progress, String> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("the body is not valid JSON: {e}"))?;
        let Value::Object(object) = value else {
            return Err("the JSON body must be an object".into());
        };
        let mut progress = None;
        let mut message = None;
        for (name, value) in object {
            match name.as_str() {
                "progress" => {
                    let n = value
                        .as_f64()
                        .ok_or("`progress` must be a number from 0 to 1")?;
                    progress = Some(n);
                }
                "message" => {
                    message = match value {
                        Value::Null => None,
                        Value::String(s) => Some(s),
                        _ => return Err("`message` must be a string".into()),
                    }
                }
                other => return Err(unknown(other)),
            }
        }
        Progress::checked(progress, message)
    }

    /// `progress=0.42&message=...` (application/x-www-form-urlencoded).
    pub fn from_form(bytes: &[u8]) -> Result<Progress, String> {
        let mut progress = None;
        let mut message = None;
        for (name, value) in form_urlencoded::parse(bytes) {
            match name.as_ref() {
                "progress" if progress.is_none() => {
                    let n = value
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| "`progress` must be a number from 0 to 1")?;
                    progress = Some(n);
                }
                "message" if message.is_none() => message = Some(value.into_owned()),
                "progress" | "message" => return Err(format!("`{name}` is given twice")),
                other => return Err(unknown(other)),
            }
        }
        Progress::checked(progress, message)
    }

    fn checked(progress: Option<f64>, message: Option<String>) -> Result<Progress, String> {
        let progress = progress.ok_or("`progress` (a number from 0 to 1) is required")?;
        if !(0.0..=1.0).contains(&progress) {
            return Err(format!("`progress` must be from 0 to 1, not {progress}"));
        }
        if let Some(m) = &message {
            if m.len() > MESSAGE_MAX {
                return Err(format!(
                    "`message` is {} bytes, over the {MESSAGE_MAX}-byte limit",
                    m.len()
                ));
            }
        }
        Ok(Progress { progress, message })
    }

    /// What the job hash keeps (field `progress`) and events carry: the report
    /// and `at`, when the worker received it.
    pub fn to_json(&self, at: &str) -> Value {
        serde_json::json!({ "progress": self.progress, "message": self.message, "at": at })
    }
}

fn unknown(name: &str) -> String {
    let mut shown: String = name.chars().take(64).collect();
    if shown.len() < name.len() {
        shown.push('…');
    }
    format!("unknown field {shown:?}: a progress report has `progress` and `message`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reports() {
        let p = Progress::from_json(br#"{"progress":0.42,"message":"frame 84/200"}"#).unwrap();
        assert_eq!(p.progress, 0.42);
        assert_eq!(p.message.as_deref(), Some("frame 84/200"));
        let p = Progress::from_json(br#"{"progress":1,"message":null}"#).unwrap();
        assert_eq!((p.progress, p.message), (1.0, None));
        assert_eq!(
            Progress::from_json(br#"{"progress":0}"#).unwrap().progress,
            0.0
        );
    }

    #[test]
    fn bad_json_reports_say_why() {
        let err = |b: &[u8]| Progress::from_json(b).unwrap_err();
        assert!(err(b"{nope").contains("not valid JSON"));
        assert!(err(b"[0.5]").contains("object"));
        assert!(err(br#"{"message":"x"}"#).contains("required"));
        assert!(err(br#"{"progress":"0.5"}"#).contains("number"));
        assert!(err(br#"{"progress":1.5}"#).contains("from 0 to 1"));
        assert!(err(br#"{"progress":-0.1}"#).contains("from 0 to 1"));
        assert!(err(br#"{"progress":0.5,"message":5}"#).contains("string"));
        assert!(err(br#"{"progress":0.5,"eta":3}"#).contains("unknown field \"eta\""));
        let long = format!(r#"{{"progress":0.5,"message":"{}"}}"#, "m".repeat(1025));
        assert!(err(long.as_bytes()).contains("1024-byte"));
        let fits = format!(r#"{{"progress":0.5,"message":"{}"}}"#, "m".repeat(1024));
        assert!(Progress::from_json(fits.as_bytes()).is_ok());
    }

    #[test]
    fn form_reports() {
        let p = Progress::from_form(b"progress=0.5&message=half+way").unwrap();
        assert_eq!((p.progress, p.message.as_deref()), (0.5, Some("half way")));
        assert!(Progress::from_form(b"progress=x")
            .unwrap_err()
            .contains("number"));
        assert!(Progress::from_form(b"progress=NaN").is_err());
        assert!(Progress::from_form(b"progress=0.1&progress=0.2")
            .unwrap_err()
            .contains("twice"));
        assert!(Progress::from_form(b"progress=0.1&x=1")
            .unwrap_err()
            .contains("unknown"));
        assert!(Progress::from_form(b"").unwrap_err().contains("required"));
    }

    #[test]
    fn the_stored_form_has_the_time() {
        let p = Progress {
            progress: 0.25,
            message: None,
        };
        assert_eq!(
            p.to_json("2026-01-01T00:00:00Z"),
            serde_json::json!({"progress":0.25,"message":null,"at":"2026-01-01T00:00:00Z"})
        );
    }
}
