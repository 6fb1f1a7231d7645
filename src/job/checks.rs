//! Small checks of single fields, shared by the job's validation and by what it
//! attaches (services, volumes). Pure: each takes a value and says what is wrong.

use super::Rejection;
use std::path::{Component, Path};

pub(super) fn check_env(key: &str, value: &str) -> Result<(), Rejection> {
    check_env_named(&format!("env.{key}"), key, value)
}

/// Checks one variable; `field` names it in the message.
pub(super) fn check_env_named(field: &str, key: &str, value: &str) -> Result<(), Rejection> {
    let first_ok = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Rejection::invalid(
            field,
            "a variable name is letters, digits and _, not starting with a digit",
        ));
    }
    if key.starts_with("DOCKHAND_") {
        return Err(Rejection::invalid(
            field,
            "DOCKHAND_* variables are set by the worker",
        ));
    }
    if value.contains('\0') {
        return Err(Rejection::invalid(field, "must not contain a NUL byte"));
    }
    Ok(())
}

/// `a/b/c.txt` for a path that stays inside its folder; `None` for `..`, `/x`, a
/// name over 255 bytes (no file system takes it) and the like.
pub(super) fn safe_relative_path(path: &str) -> Option<String> {
    if path.is_empty() || path.len() > 1024 || path.contains('\0') || path.contains('\\') {
        return None;
    }
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) if p.len() > 255 => return None,
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Whether `policy.images` allows `image`: empty allows any; `prefix*` matches a prefix.
pub(super) fn image_allowed(image: &str, allow: &[String]) -> bool {
    allow.is_empty() || listed(image, allow)
}

/// Whether `name` is one of `rules`: an exact name, or a prefix ending in `*`.
pub(super) fn listed(name: &str, rules: &[String]) -> bool {
    rules.iter().any(|rule| match rule.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => rule == name,
    })
}
