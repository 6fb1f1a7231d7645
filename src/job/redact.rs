//! What is kept of an entry for people to read (the job hash, the dead stream):
//! the entry with every credential it carries replaced by [`MASK`].
//!
//! Invariants:
//! - Whatever the shape of the input, no credential is kept: `secret_env` of any
//!   shape (an object's values, or the whole value when it is a list, a string or
//!   anything else), every `webhooks[].secret`, and the password or token in a
//!   `git.url` (`https://user:***@host`, `https://***@host`), the query of every
//!   `inputs[].url` and `outputs[].upload.url` (a presigned URL's signature:
//!   `https://host/key?***`), and every `outputs[].upload.headers` value.
//! - An entry that is not JSON cannot be redacted field by field: it is kept as
//!   it came only when it names none of those fields and holds no URL credential;
//!   otherwise only its size is kept.
//! - Nothing else changes: a redacted entry runs like the original, but for the
//!   masked values ([`masked_fields`] says which, so a retry from the dead stream
//!   can refuse to run with `***`).

use serde_json::Value;
use std::borrow::Cow;

/// What a credential is replaced with.
pub const MASK: &str = "***";

/// The entry with its credentials masked (see the module's invariants).
pub fn redact(raw: &[u8]) -> Cow<'_, [u8]> {
    let Ok(mut v) = serde_json::from_slice::<Value>(raw) else {
        return unparsed(raw);
    };
    let Some(obj) = v.as_object_mut() else {
        return raw.into();
    };
    let mut changed = false;
    if let Some(secrets) = obj.get_mut("secret_env") {
        match secrets.as_object_mut() {
            Some(map) => map.values_mut().for_each(|s| *s = MASK.into()),
            None => *secrets = MASK.into(),
        }
        changed = true;
    }
    for hook in obj
        .get_mut("webhooks")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(secret) = hook.get_mut("secret") {
            *secret = MASK.into();
            changed = true;
        }
    }
    if let Some(url) = obj.get_mut("git").and_then(|g| g.get_mut("url")) {
        if let Some(text) = url.as_str() {
            let masked = crate::source::redact_url(text);
            if masked != text {
                *url = masked.into();
                changed = true;
            }
        }
    }
    changed |= transfer_urls(obj);
    if changed {
        v.to_string().into_bytes().into()
    } else {
        raw.into()
    }
}

/// Masks the queries of input and upload URLs and the upload headers' values;
/// whether anything was masked.
fn transfer_urls(obj: &mut serde_json::Map<String, Value>) -> bool {
    let mut changed = false;
    let mut mask_query = |url: &mut Value| {
        if let Some(text) = url.as_str() {
            if text.contains(['?', '#']) {
                *url = format!("{}?{MASK}", super::public_url(text)).into();
                changed = true;
            }
        }
    };
    for input in obj
        .get_mut("inputs")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(url) = input.get_mut("url") {
            mask_query(url);
        }
    }
    let mut headers_masked = false;
    for rule in obj
        .get_mut("outputs")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(upload) = rule.get_mut("upload") else {
            continue;
        };
        if let Some(url) = upload.get_mut("url") {
            mask_query(url);
        }
        if let Some(Value::Object(headers)) = upload.get_mut("headers") {
            for value in headers.values_mut() {
                *value = MASK.into();
                headers_masked = true;
            }
        }
    }
    changed || headers_masked
}

/// The fields of a stored spec whose values were masked by [`redact`].
pub fn masked_fields(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match spec.get("secret_env") {
        Some(Value::Object(map)) if map.values().any(|v| v == MASK) => {
            out.push("secret_env".into())
        }
        Some(v) if v == MASK => out.push("secret_env".into()),
        _ => {}
    }
    for (i, hook) in spec
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if hook.get("secret").is_some_and(|s| s == MASK) {
            out.push(format!("webhooks[{i}].secret"));
        }
    }
    let masked_url = |u: Option<&Value>| {
        u.and_then(Value::as_str)
            .is_some_and(|u| u.ends_with(&format!("?{MASK}")))
    };
    for (i, input) in spec
        .get("inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if masked_url(input.get("url")) {
            out.push(format!("inputs[{i}].url"));
        }
    }
    for (i, rule) in spec
        .get("outputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if masked_url(rule.pointer("/upload/url")) {
            out.push(format!("outputs[{i}].upload.url"));
        }
        if rule
            .pointer("/upload/headers")
            .and_then(Value::as_object)
            .is_some_and(|h| h.values().any(|v| v == MASK))
        {
            out.push(format!("outputs[{i}].upload.headers"));
        }
    }
    if spec
        .pointer("/git/url")
        .and_then(Value::as_str)
        .is_some_and(|u| u.contains(&format!("{MASK}@")))
    {
        out.push("git.url".into());
    }
    out
}

/// An entry that is not JSON: kept only when it shows no sign of a credential.
fn unparsed(raw: &[u8]) -> Cow<'_, [u8]> {
    let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
    let credential = ["secret", "password", "token"]
        .iter()
        .any(|w| text.contains(w))
        || text.split("://").skip(1).any(|rest| {
            let end = rest.find(['/', '?', '#', '"', ' ']).unwrap_or(rest.len());
            rest[..end].contains('@')
        });
    if !credential {
        return raw.into();
    }
    format!(
        "(not kept: {} bytes that are not valid JSON and may hold a credential)",
        raw.len()
    )
    .into_bytes()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(raw: &str) -> String {
        String::from_utf8(redact(raw.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn every_shape_of_a_credential_is_masked() {
        for raw in [
            r#"{"image":"x","secret_env":{"TOKEN":"hunter22"}}"#,
            r#"{"image":"x","secret_env":["TOKEN=hunter22"]}"#,
            r#"{"image":"x","secret_env":"hunter22"}"#,
            r#"{"image":"x","secret_env":{"TOKEN":"a"},"secret_env":{"TOKEN":"hunter22"}}"#,
            r#"{"image":"x","webhooks":[{"url":"https://h/","secret":"hunter22"}]}"#,
            r#"{"git":{"url":"https://bot:hunter22@h.example/x.git"}}"#,
            r#"{"git":{"url":"https://hunter22@h.example/x.git"}}"#,
            r#"{"image": 7, "secret_env": {"T": "hunter22"}"#,
            r#"{"git":{"url":"https://bot:hunter22@h/x"#,
            r#"{"image":"x","inputs":[{"path":"a","url":"https://s3/b/k?X-Amz-Signature=hunter22"}]}"#,
            r#"{"image":"x","outputs":[{"path":"a","upload":{"url":"https://s3/b/k?sig=hunter22","headers":{"Authorization":"Bearer hunter22"}}}]}"#,
        ] {
            let kept = stored(raw);
            assert!(!kept.contains("hunter22"), "{raw} -> {kept}");
        }
        let kept = stored(
            r#"{"image":"x","env":{"A":"1"},"secret_env":{"T":"s"},"webhooks":[{"url":"u","secret":"s"}],"git":{"url":"https://b:p@h/x"}}"#,
        );
        let v: Value = serde_json::from_str(&kept).unwrap();
        assert_eq!(v["env"]["A"], "1");
        assert_eq!(v["git"]["url"], "https://b:***@h/x");
        assert_eq!(
            masked_fields(&v),
            ["secret_env", "webhooks[0].secret", "git.url"]
        );
    }

    #[test]
    fn what_holds_no_credential_is_kept_as_it_came() {
        for raw in [
            r#"{"image":"x","env":{"A":"1"}}"#,
            "{nope",
            r#"{"git":{"url":"https://h/x"}}"#,
        ] {
            assert_eq!(stored(raw), raw);
        }
        assert!(masked_fields(&serde_json::json!({"image": "x"})).is_empty());
    }
}
