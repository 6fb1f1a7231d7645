//! One POST body read into a [`Posted`]: the three content types, the field rules
//! and the size limits. Pure except for reading the body stream, so it is unit-tested
//! here without a socket.
//!
//! Invariants:
//!
//! - The body is read as a stream capped at `max_body` bytes: one byte more fails the
//!   read, so memory stays within the cap whatever the client sends.
//! - Result files (multipart parts with a file name) total at most `limit_bytes`;
//!   one byte more refuses the whole POST with 413. Nothing is dropped silently:
//!   a job that posts too much learns it from the answer.
//! - The fields of the other URL (`error_*` on `RESPONSE_URL`, `result_*` on
//!   `ABORT_URL`) refuse the POST, and so does a field given twice. Unknown fields are
//!   ignored, as in `result.json`, and named in [`Posted::dropped`].

use super::{PostKind, Posted};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

/// Any error the underlying body stream can fail with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a POST was refused; each kind is one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400 Bad Request, with a one-line reason.
    BadRequest(String),
    /// 413 Content Too Large, with a reason naming the limit.
    TooLarge(String),
}

/// How the capped body stream fails. Boxed through multer, then recovered by
/// downcasting, so a multipart body over the cap is still a 413.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the body is over {max} bytes")]
    TooLarge { max: u64 },
    #[error("cannot read the body")]
    Read(#[source] BoxError),
}

/// The content types a POST may have, from its `Content-Type` header.
#[derive(Debug, PartialEq, Eq)]
enum Format {
    Json,
    Form,
    Multipart {
        boundary: String,
    },
    /// No `Content-Type`: accepted only with an empty body (`curl -X POST $ABORT_URL`).
    Missing,
}

fn format(content_type: Option<&str>) -> Result<Format, Refusal> {
    let Some(content_type) = content_type else {
        return Ok(Format::Missing);
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-www-form-urlencoded" => Ok(Format::Form),
        "multipart/form-data" => multer::parse_boundary(content_type)
            .map(|boundary| Format::Multipart { boundary })
            .map_err(|_| bad("multipart/form-data needs a boundary parameter".into())),
        _ => Err(bad(format!(
            "unsupported Content-Type {essence:?}: use application/json, \
             application/x-www-form-urlencoded or multipart/form-data"
        ))),
    }
}

/// Reads one POST of `kind` from `body`. Reads at most `max_body` bytes of it;
/// result files may total `limit_bytes`. `body` is borrowed so that the caller
/// can drain what is left after a refusal.
pub(crate) async fn read_post<S>(
    kind: PostKind,
    content_type: Option<&str>,
    body: &mut S,
    limit_bytes: u64,
    max_body: u64,
) -> Result<Posted, Refusal>
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + Unpin,
{
    let format = format(content_type)?;
    let too_large = |e: BodyError| match e {
        BodyError::TooLarge { max } => body_too_large(max, limit_bytes),
        BodyError::Read(e) => bad(format!("cannot read the body: {e}")),
    };
    let body = capped(body, max_body);
    let mut fields = Fields::new(kind);
    match format {
        Format::Missing => {
            if !collect(body).await.map_err(too_large)?.is_empty() {
                return Err(bad("missing Content-Type: use application/json, \
                     application/x-www-form-urlencoded or multipart/form-data"
                    .into()));
            }
        }
        Format::Json => fields.json(&collect(body).await.map_err(too_large)?)?,
        Format::Form => fields.form(&collect(body).await.map_err(too_large)?)?,
        Format::Multipart { boundary } => {
            let mut multipart = multer::Multipart::new(body, boundary);
            fields
                .multipart(&mut multipart, limit_bytes)
                .await
                .map_err(|e| match e {
                    PartError::Refused(r) => r,
                    PartError::Body(e) => too_large(e),
                })?;
        }
    }
    Ok(fields.posted)
}

/// The refusal of a body over `max_body` bytes, naming both limits.
pub(crate) fn body_too_large(max_body: u64, limit_bytes: u64) -> Refusal {
    Refusal::TooLarge(format!(
        "the body is over {max_body} bytes (the job's output limit of {limit_bytes} bytes \
         plus {} bytes for the fields)",
        max_body.saturating_sub(limit_bytes)
    ))
}

/// `body`, failing once more than `max` bytes went through.
fn capped<S>(body: &mut S, max: u64) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + '_
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + Unpin,
{
    let mut seen: u64 = 0;
    body.map(move |chunk| {
        let chunk = chunk.map_err(BodyError::Read)?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > max {
            return Err(BodyError::TooLarge { max });
        }
        Ok(chunk)
    })
}

async fn collect(body: impl Stream<Item = Result<Bytes, BodyError>>) -> Result<Vec<u8>, BodyError> {
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn bad(reason: String) -> Refusal {
    Refusal::BadRequest(reason)
}

enum PartError {
    Refused(Refusal),
    Body(BodyError),
}

impl From<Refusal> for PartError {
    fn from(r: Refusal) -> PartError {
        PartError::Refused(r)
    }
}

impl From<multer::Error> for PartError {
    fn from(e: multer::Error) -> PartError {
        if let multer::Error::StreamReadFailed(inner) = e {
            return match inner.downcast::<BodyError>() {
                Ok(body) => PartError::Body(*body),
                Err(other) => PartError::Body(BodyError::Read(other)),
            };
        }
        PartError::Refused(bad(format!("malformed multipart body: {e}")))
    }
}

/// The fields of one POST as they arrive, checked one by one.
struct Fields {
    posted: Posted,
    /// Names already given, to refuse a repeated field in a form or multipart body.
    seen: Vec<String>,
}

impl Fields {
    fn new(kind: PostKind) -> Fields {
        Fields {
            posted: Posted {
                kind,
                text: None,
                data: None,
                files: Vec::new(),
                dropped: Vec::new(),
            },
            seen: Vec::new(),
        }
    }

    fn json(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(bad("the JSON body must be an object".into()));
        };
        for (name, value) in object {
            match self.known(&name)? {
                Some(Field::Text) => {
                    self.posted.text = match value {
                        Value::Null => None,
                        Value::String(s) => Some(s),
                        _ => return Err(bad(format!("`{name}` must be a string"))),
                    }
                }
                Some(Field::Data) => self.posted.data = Some(value).filter(|v| !v.is_null()),
                None => self.drop_unknown(&name),
            }
        }
        Ok(())
    }

    fn form(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        for (name, value) in form_urlencoded::parse(bytes) {
            self.string(&name, value.into_owned())?;
        }
        Ok(())
    }

    async fn multipart(
        &mut self,
        multipart: &mut multer::Multipart<'_>,
        limit_bytes: u64,
    ) -> Result<(), PartError> {
        let mut files_bytes: u64 = 0;
        while let Some(mut part) = multipart.next_field().await? {
            let name = part.name().unwrap_or_default().to_string();
            if let Some(file_name) = part.file_name() {
                let file_name = file_name_of(file_name)?;
                if self.posted.files.iter().any(|(n, _)| *n == file_name) {
                    return Err(bad(format!("the file {file_name:?} is given twice")).into());
                }
                let mut content = Vec::new();
                while let Some(chunk) = part.chunk().await? {
                    files_bytes = files_bytes.saturating_add(chunk.len() as u64);
                    if files_bytes > limit_bytes {
                        return Err(Refusal::TooLarge(format!(
                            "the files are over the job's output limit of {limit_bytes} bytes \
                             (limits.output_bytes)"
                        ))
                        .into());
                    }
                    content.extend_from_slice(&chunk);
                }
                self.posted.files.push((file_name, content));
                continue;
            }
            if name.is_empty() {
                return Err(bad("a multipart part has no name".into()).into());
            }
            if self.known(&name)?.is_none() {
                // Unread, the part is skipped by the next `next_field`.
                self.drop_unknown(&name);
                continue;
            }
            let bytes = part.bytes().await?;
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| bad(format!("`{name}` is not valid UTF-8")))?;
            self.string(&name, text)?;
        }
        Ok(())
    }

    /// A field whose value came as text (form or multipart): `*_data` is JSON text.
    fn string(&mut self, name: &str, value: String) -> Result<(), Refusal> {
        let Some(field) = self.known(name)? else {
            self.drop_unknown(name);
            return Ok(());
        };
        if self.seen.iter().any(|n| n == name) {
            return Err(bad(format!("`{name}` is given twice")));
        }
        self.seen.push(name.to_string());
        match field {
            Field::Text => self.posted.text = Some(value),
            Field::Data => {
                let data: Value = serde_json::from_str(&value)
                    .map_err(|e| bad(format!("`{name}` is not valid JSON: {e}")))?;
                self.posted.data = Some(data).filter(|v| !v.is_null());
            }
        }
        Ok(())
    }

    /// Which of this URL's fields `name` is; refuses the other URL's fields.
    fn known(&self, name: &str) -> Result<Option<Field>, Refusal> {
        let kind = self.posted.kind;
        if name == kind.text_field() {
            return Ok(Some(Field::Text));
        }
        if name == kind.data_field() {
            return Ok(Some(Field::Data));
        }
        let other = kind.other();
        if name == other.text_field() || name == other.data_field() {
            return Err(bad(format!(
                "`{name}` belongs to {}; {} takes `{}` and `{}`",
                other.url_name(),
                kind.url_name(),
                kind.text_field(),
                kind.data_field()
            )));
        }
        Ok(None)
    }

    fn drop_unknown(&mut self, name: &str) {
        let entry = format!("field {name:?} (unknown, ignored)");
        if !self.posted.dropped.contains(&entry) {
            self.posted.dropped.push(entry);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Text,
    Data,
}

/// The name a posted file is kept under: the last component of what the client
/// sent (old browsers send `C:\dir\name`), and refused when that is empty, `.`,
/// `..`, over 255 bytes, or holds a control character.
fn file_name_of(sent: &str) -> Result<String, Refusal> {
    let name = sent.rsplit(['/', '\\']).next().unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad(format!("the file name {sent:?} names no file")));
    }
    if name.len() > 255 || name.chars().any(char::is_control) {
        return Err(bad(format!("the file name {sent:?} is not allowed")));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: u64 = 100;
    const MAX: u64 = 1000;

    async fn post(
        kind: PostKind,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Posted, Refusal> {
        post_limited(kind, content_type, body, LIMIT, MAX).await
    }

    async fn post_limited(
        kind: PostKind,
        content_type: Option<&str>,
        body: &[u8],
        limit: u64,
        max: u64,
    ) -> Result<Posted, Refusal> {
        // Small chunks, so that limits are crossed in the middle of the stream.
        let chunks: Vec<Result<Bytes, BoxError>> = body
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut stream = futures_util::stream::iter(chunks);
        read_post(kind, content_type, &mut stream, limit, max).await
    }

    fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, file_name, content) in parts {
            body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
            body.extend_from_slice(name.as_bytes());
            body.push(b'"');
            if let Some(f) = file_name {
                body.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
            }
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    const MULTIPART: Option<&str> = Some("multipart/form-data; boundary=XyZ");
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const JSON: Option<&str> = Some("application/json; charset=utf-8");

    fn refused(r: Result<Posted, Refusal>) -> String {
        match r {
            Err(Refusal::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn json_response_and_abort() {
        let p = post(
            PostKind::Response,
            JSON,
            br#"{"result_text":"done","result_data":{"n":1}}"#,
        )
        .await
        .unwrap();
        assert_eq!(p.text.as_deref(), Some("done"));
        assert_eq!(p.data, Some(json!({"n": 1})));
        let p = post(
            PostKind::Abort,
            JSON,
            br#"{"error_text":"no","error_data":[1,2],"x":1}"#,
        )
        .await
        .unwrap();
        assert_eq!((p.kind, p.text.as_deref()), (PostKind::Abort, Some("no")));
        assert_eq!(p.data, Some(json!([1, 2])));
        assert_eq!(
            p.dropped,
            vec![r#"field "x" (unknown, ignored)"#.to_string()]
        );
    }

    #[tokio::test]
    async fn json_refusals_name_the_problem() {
        assert!(refused(post(PostKind::Response, JSON, b"{nope").await).contains("not valid JSON"));
        assert!(refused(post(PostKind::Response, JSON, b"[1]").await).contains("object"));
        let m = refused(post(PostKind::Response, JSON, br#"{"result_text":5}"#).await);
        assert!(m.contains("`result_text` must be a string"), "{m}");
        let m = refused(post(PostKind::Response, JSON, br#"{"error_text":"x"}"#).await);
        assert!(m.contains("`error_text` belongs to ABORT_URL"), "{m}");
        let m = refused(post(PostKind::Abort, JSON, br#"{"result_data":1}"#).await);
        assert!(m.contains("`result_data` belongs to RESPONSE_URL"), "{m}");
    }

    #[tokio::test]
    async fn form_fields_and_json_data() {
        let p = post(
            PostKind::Response,
            FORM,
            b"result_text=a+b%21&result_data=%7B%22k%22%3A%5B1%5D%7D",
        )
        .await
        .unwrap();
        assert_eq!(p.text.as_deref(), Some("a b!"));
        assert_eq!(p.data, Some(json!({"k": [1]})));
        let m = refused(post(PostKind::Response, FORM, b"result_data=%7Bnope").await);
        assert!(m.contains("`result_data` is not valid JSON"), "{m}");
        let m = refused(post(PostKind::Abort, FORM, b"error_text=a&error_text=b").await);
        assert!(m.contains("given twice"), "{m}");
        // A bare string is not JSON text: a form must quote it.
        assert!(post(PostKind::Response, FORM, b"result_data=plain")
            .await
            .is_err());
        let p = post(PostKind::Response, FORM, b"result_data=%22plain%22")
            .await
            .unwrap();
        assert_eq!(p.data, Some(json!("plain")));
    }

    #[tokio::test]
    async fn multipart_fields_and_files() {
        let body = multipart(&[
            ("result_text", None, b"ok"),
            ("result_data", None, br#"{"rows":3}"#),
            ("file", Some("report.csv"), b"a,b\n1,2\n"),
            ("other", Some("C:\\Users\\me\\b.bin"), &[0, 159, 255]),
            ("note", None, b"ignored"),
        ]);
        let p = post(PostKind::Response, MULTIPART, &body).await.unwrap();
        assert_eq!(p.text.as_deref(), Some("ok"));
        assert_eq!(p.data, Some(json!({"rows": 3})));
        assert_eq!(
            p.files,
            vec![
                ("report.csv".to_string(), b"a,b\n1,2\n".to_vec()),
                ("b.bin".to_string(), vec![0, 159, 255]),
            ]
        );
        assert_eq!(
            p.dropped,
            vec![r#"field "note" (unknown, ignored)"#.to_string()]
        );
    }

    #[tokio::test]
    async fn multipart_refusals() {
        let two = multipart(&[("a", Some("x/r.txt"), b"1"), ("b", Some("r.txt"), b"2")]);
        let m = refused(post(PostKind::Response, MULTIPART, &two).await);
        assert!(m.contains("given twice"), "{m}");
        for name in ["..", "dir/..", "", "a/"] {
            let body = multipart(&[("f", Some(name), b"1")]);
            let m = refused(post(PostKind::Response, MULTIPART, &body).await);
            assert!(m.contains("names no file"), "{name:?}: {m}");
        }
        let wrong = multipart(&[("error_data", None, b"{}")]);
        assert!(refused(post(PostKind::Response, MULTIPART, &wrong).await).contains("ABORT_URL"));
        let m = refused(post(PostKind::Response, MULTIPART, b"--XyZ\r\ngarbage").await);
        assert!(m.contains("multipart"), "{m}");
        let m = refused(post(PostKind::Response, Some("multipart/form-data"), b"").await);
        assert!(m.contains("boundary"), "{m}");
    }

    #[tokio::test]
    async fn files_over_the_limit_refuse_the_post() {
        let at_limit = vec![b'x'; LIMIT as usize];
        let body = multipart(&[
            ("a", Some("a"), &at_limit[..60]),
            ("b", Some("b"), &at_limit[60..]),
        ]);
        let p = post(PostKind::Response, MULTIPART, &body).await.unwrap();
        assert_eq!(p.files.len(), 2);
        let body = multipart(&[
            ("a", Some("a"), &at_limit[..60]),
            ("b", Some("b"), &at_limit[59..]),
        ]);
        match post(PostKind::Response, MULTIPART, &body).await {
            Err(Refusal::TooLarge(m)) => {
                assert!(m.contains("100 bytes (limits.output_bytes)"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_too_large_whatever_their_type() {
        let text = format!(r#"{{"result_text":"{}"}}"#, "y".repeat(MAX as usize));
        let form = format!("result_text={}", "y".repeat(MAX as usize));
        let parts = multipart(&[("result_text", None, "y".repeat(MAX as usize).as_bytes())]);
        for (ct, body) in [
            (JSON, text.as_bytes()),
            (FORM, form.as_bytes()),
            (MULTIPART, &parts),
        ] {
            match post(PostKind::Response, ct, body).await {
                Err(Refusal::TooLarge(m)) => assert!(m.contains("over 1000 bytes"), "{m}"),
                other => panic!("{ct:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn content_types() {
        let m = refused(post(PostKind::Response, Some("text/plain"), b"hi").await);
        assert!(m.contains("unsupported Content-Type \"text/plain\""), "{m}");
        let m = refused(post(PostKind::Response, None, b"hi").await);
        assert!(m.contains("missing Content-Type"), "{m}");
        // An empty POST with no type is the simplest abort: `curl -X POST $ABORT_URL`.
        let p = post(PostKind::Abort, None, b"").await.unwrap();
        assert_eq!((p.text, p.data), (None, None));
        assert!(post(PostKind::Response, Some("Application/JSON"), b"{}")
            .await
            .is_ok());
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name_of("a.txt").unwrap(), "a.txt");
        assert_eq!(file_name_of("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(file_name_of("a..b").unwrap(), "a..b");
        assert!(file_name_of("a\nb").is_err());
        assert!(file_name_of(&"n".repeat(256)).is_err());
        assert!(file_name_of(".").is_err());
    }
}
