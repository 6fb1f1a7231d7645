//! One POST body read into a [`Posted`]: the three content types, the field rules
//! and the limits. Reading the body ([`read_body`]) is async; parsing it
//! ([`parse`]) is plain synchronous code, run by the handler on a blocking thread
//! and unit-tested here without a socket.
//!
//! Invariants:
//!
//! - The body is read as a stream capped at `max_body` bytes: one byte more fails the
//!   read, so memory stays within the cap whatever the client sends.
//! - Result files (multipart parts with a file name) total at most `limit_bytes`;
//!   one byte more refuses the whole POST with 413. Nothing is dropped silently:
//!   a job that posts too much learns it from the answer.
//! - At most `max_fields` fields (JSON keys, form pairs, multipart parts without a
//!   file name; known or not) and `max_files` files: one more refuses the POST
//!   with 413 naming the limit, and parsing stops there, so the work done for a
//!   POST is bounded by the limits, not by what the client sent.
//! - Every check per field is O(1) (a match, or a hash set), so a POST at the
//!   limits costs time linear in its size.
//! - The fields of the other URL (`error_*` on `RESPONSE_URL`, `result_*` on
//!   `ABORT_URL`) refuse the POST, and so does a field given twice. Unknown fields are
//!   ignored, as in `result.json`, and named in [`Posted::dropped`].

use super::{PostKind, Posted};
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::cell::Cell;
use std::collections::HashSet;
use std::convert::Infallible;

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

/// What one POST may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PostLimits {
    /// The job's `limits.output_bytes`: what its result files may total.
    pub limit_bytes: u64,
    /// The whole body: `limit_bytes` plus the room for the fields.
    pub max_body: u64,
    /// `results.max_fields`.
    pub max_fields: usize,
    /// `results.max_files`.
    pub max_files: usize,
}

/// The content types a POST may have, from its `Content-Type` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Form,
    Multipart {
        boundary: String,
    },
    /// No `Content-Type`: accepted only with an empty body (`curl -X POST $ABORT_URL`).
    Missing,
}

/// The format of a POST from its `Content-Type`, or why it is refused.
pub(crate) fn format(content_type: Option<&str>) -> Result<Format, Refusal> {
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

/// Reads the whole body, at most `limits.max_body` bytes of it. `body` is
/// borrowed so that the caller can drain what is left after a refusal.
pub(crate) async fn read_body<S>(body: &mut S, limits: &PostLimits) -> Result<Bytes, Refusal>
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + Unpin,
{
    let max = limits.max_body;
    let mut seen: u64 = 0;
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| bad(format!("cannot read the body: {e}")))?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > max {
            return Err(body_too_large(max, limits.limit_bytes));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Parses one POST of `kind` whose body is `body`. CPU work only, bounded by
/// the limits; the handler runs it on a blocking thread.
pub(crate) fn parse(
    kind: PostKind,
    format: Format,
    body: Bytes,
    limits: &PostLimits,
) -> Result<Posted, Refusal> {
    let mut fields = Fields::new(kind, limits);
    match format {
        Format::Missing => {
            if !body.is_empty() {
                return Err(bad("missing Content-Type: use application/json, \
                     application/x-www-form-urlencoded or multipart/form-data"
                    .into()));
            }
        }
        Format::Json => fields.json(&body)?,
        Format::Form => fields.form(&body)?,
        Format::Multipart { boundary } => {
            // The whole body is in memory, so multer never waits: each of its
            // futures is ready when first polled.
            let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(body) });
            let mut multipart = multer::Multipart::new(stream, boundary);
            fields
                .multipart(&mut multipart)
                .now_or_never()
                .unwrap_or_else(|| Err(bad("malformed multipart body".into())))?;
        }
    }
    Ok(fields.posted)
}

/// The refusal of a body over `max_body` bytes, naming both limits.
pub(crate) fn body_too_large(max_body: u64, limit_bytes: u64) -> Refusal {
    Refusal::TooLarge(format!(
        "the body is over {max_body} bytes (the job's output limit of {limit_bytes} bytes \
         plus {} bytes for the fields, results.fields_bytes)",
        max_body.saturating_sub(limit_bytes)
    ))
}

fn too_many_fields(max: usize) -> Refusal {
    Refusal::TooLarge(format!(
        "the body has more than {max} fields (results.max_fields)"
    ))
}

fn too_many_files(max: usize) -> Refusal {
    Refusal::TooLarge(format!(
        "the body has more than {max} files (results.max_files)"
    ))
}

fn bad(reason: String) -> Refusal {
    Refusal::BadRequest(reason)
}

fn malformed(e: multer::Error) -> Refusal {
    bad(format!("malformed multipart body: {e}"))
}

/// The top-level object of a JSON body as its `(name, value)` pairs in order,
/// refused once it has more than `max` of them: the parser stops there instead
/// of building a map of whatever size the client sent.
struct TopLevel<'a> {
    max: usize,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Vec<(String, Value)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if out.len() == self.max {
                self.over.set(true);
                return Err(serde::de::Error::custom("too many fields"));
            }
            out.push((name, map.next_value::<Value>()?));
        }
        Ok(out)
    }
}

/// The fields of one POST as they arrive, checked one by one.
struct Fields {
    posted: Posted,
    max_fields: usize,
    max_files: usize,
    limit_bytes: u64,
    /// Fields seen so far, known or not (files not counted).
    count: usize,
    /// Known fields already given (text, data), to refuse a repeated one.
    given: [bool; 2],
    /// The names in `posted.dropped`, so that each is named once.
    dropped: HashSet<String>,
    /// The names in `posted.files`, to refuse a repeated one.
    file_names: HashSet<String>,
}

impl Fields {
    fn new(kind: PostKind, limits: &PostLimits) -> Fields {
        Fields {
            posted: Posted {
                kind,
                text: None,
                data: None,
                files: Vec::new(),
                dropped: Vec::new(),
            },
            max_fields: limits.max_fields,
            max_files: limits.max_files,
            limit_bytes: limits.limit_bytes,
            count: 0,
            given: [false; 2],
            dropped: HashSet::new(),
            file_names: HashSet::new(),
        }
    }

    /// Counts one more field; refuses the one past the limit.
    fn count_field(&mut self) -> Result<(), Refusal> {
        if self.count == self.max_fields {
            return Err(too_many_fields(self.max_fields));
        }
        self.count += 1;
        Ok(())
    }

    fn json(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        let over = Cell::new(false);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = TopLevel {
            max: self.max_fields,
            over: &over,
        }
        .deserialize(&mut de)
        .and_then(|object| de.end().map(|()| object));
        let object = match parsed {
            Ok(object) => object,
            Err(_) if over.get() => return Err(too_many_fields(self.max_fields)),
            Err(e) if e.is_data() => return Err(bad("the JSON body must be an object".into())),
            Err(e) => return Err(bad(format!("the body is not valid JSON: {e}"))),
        };
        for (name, value) in object {
            self.count_field()?;
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
            self.count_field()?;
            self.string(&name, value.into_owned())?;
        }
        Ok(())
    }

    async fn multipart(&mut self, multipart: &mut multer::Multipart<'_>) -> Result<(), Refusal> {
        let limit_bytes = self.limit_bytes;
        let mut files_bytes: u64 = 0;
        while let Some(mut part) = multipart.next_field().await.map_err(malformed)? {
            let name = part.name().unwrap_or_default().to_string();
            if let Some(file_name) = part.file_name() {
                let file_name = file_name_of(file_name)?;
                if self.posted.files.len() == self.max_files {
                    return Err(too_many_files(self.max_files));
                }
                if !self.file_names.insert(file_name.clone()) {
                    return Err(bad(format!("the file {file_name:?} is given twice")));
                }
                let mut content = Vec::new();
                while let Some(chunk) = part.chunk().await.map_err(malformed)? {
                    files_bytes = files_bytes.saturating_add(chunk.len() as u64);
                    if files_bytes > limit_bytes {
                        return Err(Refusal::TooLarge(format!(
                            "the files are over the job's output limit of {limit_bytes} bytes \
                             (limits.output_bytes)"
                        )));
                    }
                    content.extend_from_slice(&chunk);
                }
                self.posted.files.push((file_name, content));
                continue;
            }
            if name.is_empty() {
                return Err(bad("a multipart part has no name".into()));
            }
            self.count_field()?;
            if self.known(&name)?.is_none() {
                // Unread, the part is skipped by the next `next_field`.
                self.drop_unknown(&name);
                continue;
            }
            let bytes = part.bytes().await.map_err(malformed)?;
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
        let given = &mut self.given[field as usize];
        if *given {
            return Err(bad(format!("`{name}` is given twice")));
        }
        *given = true;
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
        if self.dropped.insert(name.to_string()) {
            self.posted
                .dropped
                .push(format!("field {name:?} (unknown, ignored)"));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Text = 0,
    Data = 1,
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
    const MAX_FIELDS: usize = 5;
    const MAX_FILES: usize = 3;

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
        let limits = PostLimits {
            limit_bytes: limit,
            max_body: max,
            max_fields: MAX_FIELDS,
            max_files: MAX_FILES,
        };
        let format = format(content_type)?;
        let body = read_body(&mut stream, &limits).await?;
        parse(kind, format, body, &limits)
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

    fn too_large(r: Result<Posted, Refusal>) -> String {
        match r {
            Err(Refusal::TooLarge(m)) => m,
            other => panic!("expected a 413, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn fields_up_to_the_limit_and_not_one_more() {
        // MAX_FIELDS known and unknown fields pass, in every format.
        let json_ok = br#"{"result_text":"t","a":1,"b":2,"c":3,"d":4}"#;
        let p = post(PostKind::Response, JSON, json_ok).await.unwrap();
        assert_eq!((p.text.as_deref(), p.dropped.len()), (Some("t"), 4));
        let json_over = br#"{"a":1,"b":2,"c":3,"d":4,"e":5,"result_text":"t"}"#;
        let m = too_large(post(PostKind::Response, JSON, json_over).await);
        assert_eq!(m, "the body has more than 5 fields (results.max_fields)");
        assert!(post(PostKind::Response, FORM, b"a=1&b=2&c=3&d=4&e=5")
            .await
            .is_ok());
        let m = too_large(post(PostKind::Response, FORM, b"a=1&b=2&c=3&d=4&e=5&f=6").await);
        assert!(m.contains("more than 5 fields (results.max_fields)"), "{m}");
        // The same unknown name over and over still counts each time.
        let m = too_large(post(PostKind::Response, FORM, &b"a=&".repeat(6)).await);
        assert!(m.contains("results.max_fields"), "{m}");
        let five: Vec<_> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|n| (*n, None, &b"x"[..]))
            .collect();
        assert!(post(PostKind::Response, MULTIPART, &multipart(&five[..5]))
            .await
            .is_ok());
        let m = too_large(post(PostKind::Response, MULTIPART, &multipart(&five)).await);
        assert!(m.contains("results.max_fields"), "{m}");
    }

    #[tokio::test]
    async fn files_up_to_the_limit_and_not_one_more() {
        let names = ["f1", "f2", "f3", "f4"];
        let parts: Vec<_> = names
            .iter()
            .map(|n| ("file", Some(*n), &b"1"[..]))
            .collect();
        // Files do not count as fields, nor fields as files.
        let mut at_limit = parts[..3].to_vec();
        at_limit.extend([("a", None, &b"1"[..]), ("b", None, &b"2"[..])]);
        let p = post(PostKind::Response, MULTIPART, &multipart(&at_limit))
            .await
            .unwrap();
        assert_eq!((p.files.len(), p.dropped.len()), (3, 2));
        let m = too_large(post(PostKind::Response, MULTIPART, &multipart(&parts)).await);
        assert_eq!(m, "the body has more than 3 files (results.max_files)");
    }

    #[test]
    fn many_unknown_fields_take_linear_time() {
        // 200,000 distinct unknown names: quadratic checks took minutes for this.
        let mut body = String::from("{");
        for i in 0..200_000 {
            body.push_str(&format!("\"f{i}\":1,"));
        }
        body.push_str("\"result_text\":\"t\"}");
        let limits = PostLimits {
            limit_bytes: 0,
            max_body: u64::MAX,
            max_fields: usize::MAX,
            max_files: 0,
        };
        let p = parse(
            PostKind::Response,
            Format::Json,
            Bytes::from(body.clone()),
            &limits,
        )
        .unwrap();
        assert_eq!((p.dropped.len(), p.text.as_deref()), (200_000, Some("t")));
        let form = body
            .replace(['{', '}', '"'], "")
            .replace(':', "=")
            .replace(',', "&");
        let p = parse(PostKind::Response, Format::Form, Bytes::from(form), &limits).unwrap();
        assert_eq!((p.dropped.len(), p.text.as_deref()), (200_000, Some("t")));
    }

    #[tokio::test]
    async fn a_json_body_that_is_not_an_object() {
        let m = refused(post(PostKind::Response, JSON, b"[1,2]").await);
        assert!(m.contains("must be an object"), "{m}");
        let m = refused(post(PostKind::Response, JSON, b"{} x").await);
        assert!(m.contains("not valid JSON"), "{m}");
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
