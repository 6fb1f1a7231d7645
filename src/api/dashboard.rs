//! The dashboard: one HTML page, its stylesheet, its script and its icon, compiled
//! into the binary (`src/api/dashboard/`) and served at `/` and
//! `/assets/<name>-<hash>.<ext>`. The page reads and steers everything through the
//! JSON API and its event streams, exactly as `curl` would.
//!
//! Invariants:
//! - Nothing is fetched at run time from anywhere but this origin: the files are
//!   `include_bytes!`ed, and every answer here carries a Content-Security-Policy
//!   that allows only `'self'` (no inline script or style, no other origin, no
//!   framing), so a job's log line or result shown by the page cannot run as code.
//! - An asset's name carries a hash of its bytes, so it is cached for a year as
//!   immutable; the page that names them is `no-cache`, so a new binary's assets
//!   are used on the next load and never mixed with an old one's.
//! - These files hold no data and no secret, so they are served without a token
//!   ([`is_public`]); all they show comes from the API, which asks for one (the
//!   page then asks the user for it).

use axum::extract::Path;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The page's own origin only; `connect-src` covers `fetch` and `EventSource`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page: `{{app.css}}`-style placeholders name the assets, and become their
/// hashed paths.
const INDEX: &str = include_str!("dashboard/index.html");

/// (file name, content type, bytes) of each asset.
const SOURCES: &[(&str, &str, &[u8])] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("dashboard/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("dashboard/app.js"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("dashboard/icon.svg"),
    ),
];

struct Asset {
    /// `app-<hash>.js`: what the page links to and the route matches.
    served_as: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

struct Bundle {
    index: String,
    assets: Vec<Asset>,
}

/// Made once, on the first request: hashing three small files.
static BUNDLE: LazyLock<Bundle> = LazyLock::new(|| {
    let mut index = INDEX.to_string();
    let assets = SOURCES
        .iter()
        .map(|&(name, content_type, bytes)| {
            let hash = hex::encode(&Sha256::digest(bytes)[..6]);
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
            let served_as = format!("{stem}-{hash}.{ext}");
            index = index.replace(&format!("{{{{{name}}}}}"), &format!("/assets/{served_as}"));
            Asset {
                served_as,
                content_type,
                bytes,
            }
        })
        .collect();
    Bundle { index, assets }
});

/// Whether a request is for the dashboard's own files, which any client may read
/// without a token (see the module's invariants).
pub fn is_public(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD) && (path == "/" || path.starts_with("/assets/"))
}

/// `GET /`: the page.
pub async fn index() -> Response {
    with_policy(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // Revalidated on every load, so it always names the current assets.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            BUNDLE.index.clone(),
        )
            .into_response(),
    )
}

/// `GET /assets/{name}`: a hashed asset, cached for good; any other name is 404.
pub async fn asset(Path(name): Path<String>) -> Response {
    let Some(a) = BUNDLE.assets.iter().find(|a| a.served_as == name) else {
        return super::ApiError::not_found("no such asset").into_response();
    };
    with_policy(
        (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.bytes,
        )
            .into_response(),
    )
}

fn with_policy(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_hashed_name() {
        let b = &*BUNDLE;
        assert!(
            !b.index.contains("{{"),
            "a placeholder is left: {}",
            b.index
        );
        for a in &b.assets {
            assert!(
                b.index.contains(&format!("/assets/{}", a.served_as)),
                "{} is not linked",
                a.served_as
            );
        }
    }

    #[test]
    fn only_the_page_and_its_assets_are_public() {
        assert!(is_public(&Method::GET, "/"));
        assert!(is_public(&Method::HEAD, "/assets/app-0123.js"));
        assert!(!is_public(&Method::POST, "/"));
        assert!(!is_public(&Method::GET, "/jobs"));
        assert!(!is_public(&Method::GET, "/queues"));
    }
}
