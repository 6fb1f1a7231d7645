//! The data a job moves over the network, checked: `inputs[].url` (fetched by
//! the worker, before start or through a named pipe) and `outputs` upload rules
//! (files sent to an http(s) URL instead of Redis).
//!
//! Invariants:
//! - Every refusal names the field at fault (`inputs[2].url`,
//!   `outputs[0].upload.headers.Host`), one small check at a time, like
//!   `validate`.
//! - Only what can be judged without I/O is judged here: the URL's shape
//!   (http or https, a host, no user or password in it), digests, methods,
//!   headers, paths and globs. Addresses are checked by the SSRF guard where the
//!   worker connects (`crate::transfer`).
//! - [`public_url`] is the only form of a URL that may be stored or logged: its
//!   query (a presigned URL's signature) and fragment are cut off.

use super::checks::safe_relative_path;
use super::{Input, OutputRule, Rejection};
use crate::job::Outputs;
use std::collections::BTreeMap;

/// A URL longer than this is refused (presigned URLs are a few hundred bytes).
pub const MAX_URL_BYTES: usize = 8192;
/// Upload rules a job may give.
const MAX_RULES: usize = 100;
/// Headers an upload may set, and their bytes together.
const MAX_HEADERS: usize = 32;
const MAX_HEADER_BYTES: usize = 16 << 10;
/// Headers the worker sets itself: a job's own would lie about the body or the host.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "expect",
    "trailer",
];

/// An input the worker fetches: `path` relative to `/dockhand/input`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInput {
    /// Its index in `inputs`, to name it (`inputs[2]`) in messages.
    pub index: usize,
    pub path: String,
    pub url: String,
    /// Lowercase hex.
    pub sha256: Option<String>,
    /// Fed through a named pipe while the job runs.
    pub stream: bool,
}

impl RemoteInput {
    /// How messages name it: `inputs[2] (data/x.bin)`.
    pub fn name(&self) -> String {
        format!("inputs[{}] ({})", self.index, self.path)
    }
}

/// When an upload rule applies to a matching file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadWhen {
    Always,
    /// Only a file that does not fit within `limits.output_bytes`.
    Overflow,
}

/// An output rule, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRule {
    pub index: usize,
    /// A path relative to `/dockhand/output`, or a glob (`*` within a name, `**`
    /// across folders, `?` one character).
    pub pattern: String,
    pub glob: bool,
    /// May hold `{name}`, replaced with the file's path (percent-encoded).
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub when: UploadWhen,
    /// `pattern` is a named pipe streamed to the upload while the job runs.
    pub pipe: bool,
}

impl UploadRule {
    pub fn matches(&self, name: &str) -> bool {
        if self.glob {
            glob_match(&self.pattern, name)
        } else {
            self.pattern == name
        }
    }

    /// The URL for the file `name`: `{name}` replaced, each path segment
    /// percent-encoded.
    pub fn url_for(&self, name: &str) -> String {
        if !self.url.contains("{name}") {
            return self.url.clone();
        }
        let encoded: Vec<String> = name
            .split('/')
            .map(|seg| {
                seg.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect()
            })
            .collect();
        self.url.replace("{name}", &encoded.join("/"))
    }
}

/// The URL as it may be stored and logged: without its query and fragment,
/// which for a presigned URL are its credentials.
pub fn public_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    url[..end].to_string()
}

/// `*` and `?` within one path segment, `**` any number of segments.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = name.split('/').collect();
    match_segments(&pat, &segs)
}

fn match_segments(pat: &[&str], segs: &[&str]) -> bool {
    // Positions reachable in `segs` after each pattern segment: polynomial, never
    // exponential, whatever the pattern.
    let mut reach = vec![false; segs.len() + 1];
    reach[0] = true;
    for p in pat {
        let mut next = vec![false; segs.len() + 1];
        for i in 0..=segs.len() {
            if !reach[i] {
                continue;
            }
            if *p == "**" {
                next[i..].iter_mut().for_each(|r| *r = true);
                break;
            }
            if i < segs.len() && match_segment(p.as_bytes(), segs[i].as_bytes()) {
                next[i + 1] = true;
            }
        }
        reach = next;
    }
    reach[segs.len()]
}

fn match_segment(p: &[u8], s: &[u8]) -> bool {
    // Classic wildcard matching with one backtrack point: linear-ish, no recursion.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Checks a URL the worker will connect to: http or https, a host, no
/// credentials in the authority, no whitespace, at most [`MAX_URL_BYTES`].
pub(super) fn check_url(field: &str, url: &str) -> Result<(), Rejection> {
    if url.len() > MAX_URL_BYTES {
        return Err(Rejection::invalid(
            field,
            format!("is {} bytes, over {MAX_URL_BYTES}", url.len()),
        ));
    }
    let shown = public_url(url);
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Rejection::invalid(
            field,
            format!("{shown:?} holds whitespace or control characters"),
        ));
    }
    // `{name}` is not a valid URI character; check the shape with it filled in.
    let probe = url.replace("{name}", "x");
    let uri: hyper::Uri = probe
        .parse()
        .map_err(|e| Rejection::invalid(field, format!("{shown:?} is not a URL: {e}")))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(Rejection::invalid(
                field,
                format!("{shown:?}: the scheme {other:?} is not supported (http or https)"),
            ))
        }
        None => {
            return Err(Rejection::invalid(
                field,
                format!("{shown:?} is not an absolute http(s) URL"),
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(Rejection::invalid(field, format!("{shown:?} has no host")));
    };
    if authority.as_str().contains('@') {
        return Err(Rejection::invalid(
            field,
            "must not carry a user or password (use `headers` for an upload's credentials)",
        ));
    }
    if authority.host().is_empty() {
        return Err(Rejection::invalid(field, format!("{shown:?} has no host")));
    }
    Ok(())
}

fn check_sha256(field: &str, digest: &str) -> Result<String, Rejection> {
    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Rejection::invalid(
            field,
            format!("{digest:?} is not a sha256 (64 hex digits)"),
        ));
    }
    Ok(digest.to_ascii_lowercase())
}

/// An input's `sha256` and `stream`, for an inline input (`content`): its digest
/// is checked at once; `stream` is for URL inputs only.
pub(super) fn inline(i: usize, input: &Input, content: &[u8]) -> Result<(), Rejection> {
    if input.stream.is_some() {
        return Err(Rejection::invalid(
            &format!("inputs[{i}].stream"),
            "applies to `url` inputs only",
        ));
    }
    if let Some(want) = &input.sha256 {
        let want = check_sha256(&format!("inputs[{i}].sha256"), want)?;
        use sha2::Digest;
        let got = hex::encode(sha2::Sha256::digest(content));
        if got != want {
            return Err(Rejection::invalid(
                &format!("inputs[{i}].sha256"),
                format!("does not match the content (its sha256 is {got})"),
            ));
        }
    }
    Ok(())
}

/// A URL input, checked (its path already is).
pub(super) fn remote(
    i: usize,
    path: String,
    url: &str,
    input: &Input,
) -> Result<RemoteInput, Rejection> {
    check_url(&format!("inputs[{i}].url"), url)?;
    if url.contains("{name}") {
        return Err(Rejection::invalid(
            &format!("inputs[{i}].url"),
            "`{name}` is for upload URLs only",
        ));
    }
    let sha256 = input
        .sha256
        .as_deref()
        .map(|d| check_sha256(&format!("inputs[{i}].sha256"), d))
        .transpose()?;
    Ok(RemoteInput {
        index: i,
        path,
        url: url.to_string(),
        sha256,
        stream: input.stream.unwrap_or(false),
    })
}

/// `outputs`: whether the job's files are collected at all, and its upload rules.
pub(super) fn outputs(outputs: &Option<Outputs>) -> Result<(bool, Vec<UploadRule>), Rejection> {
    let rules = match outputs {
        None => return Ok((true, Vec::new())),
        Some(Outputs::Collect(keep)) => return Ok((*keep, Vec::new())),
        Some(Outputs::Rules(rules)) => rules,
    };
    if rules.len() > MAX_RULES {
        return Err(Rejection::invalid(
            "outputs",
            format!("has {} rules, over {MAX_RULES}", rules.len()),
        ));
    }
    let mut checked = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        checked.push(output_rule(i, rule)?);
    }
    let pipes: Vec<&UploadRule> = checked.iter().filter(|r| r.pipe).collect();
    for (n, a) in pipes.iter().enumerate() {
        if let Some(b) = pipes[..n].iter().find(|b| b.pattern == a.pattern) {
            return Err(Rejection::invalid(
                &format!("outputs[{}].path", a.index),
                format!(
                    "{:?} is already the pipe of outputs[{}]",
                    a.pattern, b.index
                ),
            ));
        }
    }
    Ok((true, checked))
}

fn output_rule(i: usize, rule: &OutputRule) -> Result<UploadRule, Rejection> {
    let field = format!("outputs[{i}]");
    let (pattern, glob) = match (&rule.path, &rule.glob) {
        (Some(p), None) => {
            let rel = safe_relative_path(p).ok_or_else(|| {
                Rejection::invalid(
                    &format!("{field}.path"),
                    format!("{p:?} must be a relative path inside /dockhand/output (no `..`)"),
                )
            })?;
            (rel, false)
        }
        (None, Some(g)) => {
            let rel = safe_relative_path(g).ok_or_else(|| {
                Rejection::invalid(
                    &format!("{field}.glob"),
                    format!("{g:?} must be a relative pattern inside /dockhand/output (no `..`)"),
                )
            })?;
            (rel, true)
        }
        _ => {
            return Err(Rejection::invalid(
                &field,
                "give exactly one of `path` or `glob`",
            ))
        }
    };
    // Read by the worker itself (`executor::files`, `executor::progress`).
    if !glob && ["result.json", "progress.json"].contains(&pattern.as_str()) {
        return Err(Rejection::invalid(
            &format!("{field}.path"),
            format!("{pattern:?} is read by the worker itself, not an output file"),
        ));
    }
    let url_field = format!("{field}.upload.url");
    check_url(&url_field, &rule.upload.url)?;
    if glob && !rule.upload.url.contains("{name}") {
        return Err(Rejection::invalid(
            &url_field,
            "a glob's upload URL must contain `{name}` (each file needs a URL of its own)",
        ));
    }
    let method = rule
        .upload
        .method
        .as_deref()
        .unwrap_or("PUT")
        .to_ascii_uppercase();
    if method != "PUT" && method != "POST" {
        return Err(Rejection::invalid(
            &format!("{field}.upload.method"),
            format!("{method:?} is not supported (PUT or POST)"),
        ));
    }
    headers(&field, &rule.upload.headers)?;
    let when = match rule.when.as_deref() {
        None | Some("always") => UploadWhen::Always,
        Some("overflow") => UploadWhen::Overflow,
        Some(other) => {
            return Err(Rejection::invalid(
                &format!("{field}.when"),
                format!("{other:?} is not `always` or `overflow`"),
            ))
        }
    };
    let pipe = rule.pipe.unwrap_or(false);
    if pipe && glob {
        return Err(Rejection::invalid(
            &format!("{field}.pipe"),
            "a pipe is one file: give `path`, not `glob`",
        ));
    }
    if pipe && when == UploadWhen::Overflow {
        return Err(Rejection::invalid(
            &format!("{field}.when"),
            "a pipe is streamed while the job runs; `overflow` does not apply",
        ));
    }
    Ok(UploadRule {
        index: i,
        pattern,
        glob,
        url: rule.upload.url.clone(),
        method,
        headers: rule.upload.headers.clone(),
        when,
        pipe,
    })
}

fn headers(field: &str, headers: &BTreeMap<String, String>) -> Result<(), Rejection> {
    if headers.len() > MAX_HEADERS {
        return Err(Rejection::invalid(
            &format!("{field}.upload.headers"),
            format!("has {} headers, over {MAX_HEADERS}", headers.len()),
        ));
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Rejection::invalid(
            &format!("{field}.upload.headers"),
            format!("are {bytes} bytes, over {MAX_HEADER_BYTES}"),
        ));
    }
    for (name, value) in headers {
        let here = format!("{field}.upload.headers.{name}");
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(Rejection::invalid(&here, "is not a header name"));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(Rejection::invalid(
                &here,
                "is set by the worker, not by a job",
            ));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(Rejection::invalid(
                &here,
                "holds control characters (CR, LF, NUL)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_folders() {
        assert!(glob_match("*.bin", "a.bin"));
        assert!(!glob_match("*.bin", "sub/a.bin"));
        assert!(glob_match("**/*.bin", "sub/deep/a.bin"));
        assert!(glob_match("**/*.bin", "a.bin"));
        assert!(glob_match("**", "x/y"));
        assert!(glob_match("f?le", "file"));
        assert!(!glob_match("a*b", "a/b"));
        // No exponential backtracking on a hostile pattern.
        let p = "*a".repeat(30) + "b";
        assert!(!glob_match(&p, &"a".repeat(60)));
    }

    #[test]
    fn the_stored_url_has_no_query() {
        assert_eq!(
            public_url("https://s3.example/b/k?X-Amz-Signature=abc#f"),
            "https://s3.example/b/k"
        );
        let rule = UploadRule {
            index: 0,
            pattern: "**".into(),
            glob: true,
            url: "http://h/b/{name}?sig=1".into(),
            method: "PUT".into(),
            headers: BTreeMap::new(),
            when: UploadWhen::Always,
            pipe: false,
        };
        assert_eq!(rule.url_for("a b/c.txt"), "http://h/b/a%20b/c.txt?sig=1");
    }
}
