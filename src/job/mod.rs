//! The job spec a producer writes, and everything needed to trust it.
//!
//! Invariants:
//! - [`parse`] never panics: malformed JSON, a wrong type or an unknown field comes
//!   back as a [`Rejection`] whose message names the field (`limits.memory: ...`).
//! - [`validate`] turns a parsed [`JobSpec`] into a [`Job`] only when every field is
//!   in range and allowed by the worker's policy; nothing runs before that.
//! - No I/O here: these are plain types, testable without Redis or Docker.

mod after;
mod attach;
mod checks;
mod executor;
mod jobref;
mod redact;
mod retry;
mod spec;
mod status;
mod transfer;
mod validate;

pub use after::{After, AfterPolicy, MAX_PARENTS};
pub use attach::{Mount, Publish, ServiceRun};
pub use executor::ExecutorKind;
pub use jobref::JobRef;
pub use redact::{masked_fields, redact, MASK};
pub use retry::{RetryOn, RetryPolicy};
pub use spec::{
    Command, GitSpec, Input, JobSpec, Limits, OutputRule, Outputs, Port, Retry, Script, Service,
    Upload,
};
pub use status::{Reason, Status};
pub use transfer::{glob_match, public_url, RemoteInput, UploadRule, UploadWhen, MAX_URL_BYTES};
pub use validate::{
    metadata_bytes, validate, validate_at, GitBuild, Job, ResolvedLimits, StagedFile,
    MAX_METADATA_BYTES, MAX_STAGED_BYTES,
};

/// The folder the worker manages in every job container.
pub const DOCKHAND_DIR: &str = "/dockhand";
/// Where the container finds its inputs, scratch space and what it returns.
pub const INPUT_DIR: &str = "/dockhand/input";
pub const WORK_DIR: &str = "/dockhand/work";
pub const OUTPUT_DIR: &str = "/dockhand/output";

/// Why a job was refused before it ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Rejection {
            reason: Reason::InvalidSpec,
            message: format!("`{field}`: {why}"),
        }
    }
    pub fn denied(field: &str, why: impl std::fmt::Display) -> Self {
        Rejection {
            reason: Reason::PolicyDenied,
            message: format!("`{field}`: {why}"),
        }
    }
}

/// Container settings a job can never ask for, refused as `policy_denied` (rather
/// than as unknown fields) so that the producer learns it is a rule, not a typo.
const NEVER_ALLOWED: &[(&str, &str)] = &[
    ("privileged", "privileged containers are never allowed"),
    (
        "pid",
        "sharing the host's process namespace is never allowed",
    ),
    (
        "pid_mode",
        "sharing the host's process namespace is never allowed",
    ),
    ("ipc", "sharing the host's IPC namespace is never allowed"),
    (
        "ipc_mode",
        "sharing the host's IPC namespace is never allowed",
    ),
    ("devices", "access to host devices is never allowed"),
    (
        "cap_add",
        "capabilities are set by the worker's policy (policy.cap_add), not by jobs",
    ),
    (
        "security_opt",
        "security options are set by the worker, not by jobs",
    ),
    (
        "network_mode",
        "use `network`; the host network is never allowed",
    ),
];

/// The largest entry a worker reads: 64 MiB of inputs, base64-encoded, and the rest.
pub const MAX_ENTRY_BYTES: usize = 96 << 20;
/// What the job hash and the dead stream keep of a larger entry: its beginning.
const KEPT_OF_OVERSIZED: usize = 64 << 10;

/// What is kept of an entry in the job hash and the dead stream: the entry
/// [`redact`]ed; of one over [`MAX_ENTRY_BYTES`] (refused unread), only its first
/// [`KEPT_OF_OVERSIZED`] bytes, followed by how many were left out.
pub fn for_storage(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if raw.len() <= MAX_ENTRY_BYTES {
        return redact(raw);
    }
    let mut kept = raw[..KEPT_OF_OVERSIZED].to_vec();
    kept.extend_from_slice(
        format!("… ({} more bytes not kept)", raw.len() - KEPT_OF_OVERSIZED).as_bytes(),
    );
    kept.into()
}

/// Parses a raw job entry. The message of an error names the offending field path.
pub fn parse(raw: &[u8]) -> Result<JobSpec, Rejection> {
    if raw.len() > MAX_ENTRY_BYTES {
        return Err(Rejection::invalid(
            "job",
            format!(
                "the entry is {} bytes, over the {MAX_ENTRY_BYTES}-byte limit",
                raw.len()
            ),
        ));
    }
    // Syntax first, on its own, so a truncated entry is called what it is rather
    // than a type error in whatever field came before the cut.
    let value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| Rejection {
        reason: Reason::InvalidSpec,
        message: format!("the job is not valid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(Rejection {
            reason: Reason::InvalidSpec,
            message: "the job must be a JSON object".into(),
        });
    }
    for (field, rule) in NEVER_ALLOWED {
        if value.get(field).is_some() {
            return Err(Rejection::denied(field, rule));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            Rejection {
                reason: Reason::InvalidSpec,
                message: format!("job spec: {inner}"),
            }
        } else {
            Rejection::invalid(&path, inner)
        }
    })
}

pub use crate::config::is_valid_queue_name;

/// A job id: `[A-Za-z0-9_.-]{1,128}`. No `:`: a job's keys are its id followed by
/// `:log`, `:files` and the like, so an id with a `:` could name another job's keys.
pub fn is_valid_job_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The `id` a raw entry asks for, if it is readable and valid, even when the rest of
/// the spec is not: an invalid job is still recorded under the id its producer chose.
pub fn requested_id(raw: &[u8]) -> Option<String> {
    if raw.len() > MAX_ENTRY_BYTES {
        return None; // refused unread
    }
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let id = v.get("id")?.as_str()?;
    is_valid_job_id(id).then(|| id.to_string())
}

/// The priority a raw spec asks for (its lane, see `queue::lanes`): its
/// `priority` if that is an integer in range, else 0 (validation refuses anything
/// else, naming the field). Cheap for the common spec without one.
pub fn requested_priority(raw: &[u8]) -> i64 {
    let needle = b"\"priority\"";
    if raw.len() > MAX_ENTRY_BYTES || !raw.windows(needle.len()).any(|w| w == needle) {
        return 0;
    }
    serde_json::from_slice::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| v.get("priority")?.as_i64())
        .filter(|p| (crate::queue::lanes::MIN..=crate::queue::lanes::MAX).contains(p))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_priority_is_read_only_when_it_is_an_integer_in_range() {
        assert_eq!(requested_priority(br#"{"image":"x","priority":5}"#), 5);
        assert_eq!(requested_priority(br#"{"priority":-9}"#), -9);
        assert_eq!(requested_priority(br#"{"image":"x"}"#), 0);
        assert_eq!(requested_priority(br#"{"priority":10}"#), 0);
        assert_eq!(requested_priority(br#"{"priority":"high"}"#), 0);
        assert_eq!(requested_priority(br#"{"priority":1.5}"#), 0);
        assert_eq!(requested_priority(b"not json \"priority\""), 0);
    }

    #[test]
    fn malformed_json_is_named_as_such() {
        let err = parse(br#"{"image": 42"#).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidSpec);
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
    }

    #[test]
    fn a_wrong_type_names_the_field_path() {
        let err = parse(br#"{"image":"x","limits":{"pids":"many"}}"#).unwrap_err();
        assert!(err.message.starts_with("`limits.pids`"), "{}", err.message);
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err = parse(br#"{"image":"x","imgae":"y"}"#).unwrap_err();
        assert!(err.message.contains("imgae"), "{}", err.message);
    }

    #[test]
    fn dangerous_container_settings_are_policy_denied() {
        for field in [
            "privileged",
            "pid",
            "ipc",
            "devices",
            "cap_add",
            "network_mode",
        ] {
            let err = parse(format!(r#"{{"image":"x","{field}":true}}"#).as_bytes()).unwrap_err();
            assert_eq!(err.reason, Reason::PolicyDenied, "{field}");
            assert!(
                err.message.starts_with(&format!("`{field}`")),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let r = redact(br#"{"image":"x","env":{"A":"1"},"secret_env":{"TOKEN":"hunter22"}}"#);
        let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(v["secret_env"]["TOKEN"], "***");
        assert_eq!(v["env"]["A"], "1");
        assert_eq!(&*redact(b"{nope"), b"{nope");
    }

    #[test]
    fn a_non_object_is_refused() {
        let err = parse(b"[1,2]").unwrap_err();
        assert_eq!(err.reason, Reason::InvalidSpec);
        assert!(err.message.contains("JSON object"), "{}", err.message);
    }

    #[test]
    fn names_are_checked() {
        assert!(is_valid_queue_name("default"));
        assert!(is_valid_queue_name("a.b-c_d"));
        assert!(!is_valid_queue_name("a:b"));
        assert!(!is_valid_queue_name(""));
        assert!(is_valid_job_id("1700000000000-0"));
        assert!(is_valid_job_id("tenant-42.v2_a"));
        for reaches_keys in ["v:log", "v:files", "tenant:42", ":"] {
            assert!(!is_valid_job_id(reaches_keys), "{reaches_keys}");
        }
        assert!(!is_valid_job_id("has space"));
        assert!(!is_valid_job_id(&"x".repeat(129)));
    }

    #[test]
    fn requested_id_survives_a_bad_spec() {
        assert_eq!(
            requested_id(br#"{"id":"abc","image":7}"#),
            Some("abc".into())
        );
        assert_eq!(requested_id(br#"{"id":"a b"}"#), None);
        assert_eq!(requested_id(b"{"), None);
    }

    #[test]
    fn an_oversized_entry_is_refused_unread_and_kept_short() {
        let huge = vec![b' '; MAX_ENTRY_BYTES + 1];
        let err = parse(&huge).unwrap_err();
        assert!(
            err.message.starts_with("`job`") && err.message.contains("over the"),
            "{}",
            err.message
        );
        let kept = for_storage(&huge);
        assert!(kept.len() < KEPT_OF_OVERSIZED + 64);
        assert!(kept.ends_with(
            format!(
                "({} more bytes not kept)",
                MAX_ENTRY_BYTES + 1 - KEPT_OF_OVERSIZED
            )
            .as_bytes()
        ));
    }
}
