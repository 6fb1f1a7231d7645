//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
//!
//! Pure functions, no I/O. Invariants:
//!
//! - A [`Secret`] always holds 24 to 64 key bytes (the spec's "at least 192 bits,
//!   512 at most"), so a typo'd or truncated secret is refused when it is read,
//!   not discovered by a subscriber whose verification fails.
//! - Key material never appears in `Debug` output or in an error message; only
//!   [`Secret::to_whsec`] writes it out, for the one place that must show it.
//! - [`sign`] signs the exact bytes that are sent; with several secrets (during a
//!   rotation) the signatures are joined by one space, in the order given.
//! - [`verify`] compares MACs in constant time (hmac's `verify_slice`), never
//!   with `==` on the encoded strings.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// What a serialized secret starts with, per the spec.
pub const SECRET_PREFIX: &str = "whsec_";
/// The signature scheme identifier of HMAC-SHA256 signatures.
const VERSION: &str = "v1";
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;
/// The size of a secret made by [`Secret::generate`].
const GENERATED_KEY_BYTES: usize = 32;

/// Secrets are read with or without `=` padding: some tools strip it, and the
/// reference libraries accept both.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret must start with `{SECRET_PREFIX}`")]
    Prefix,
    #[error("the part of the webhook secret after `{SECRET_PREFIX}` is not valid base64")]
    Base64(#[source] base64::DecodeError),
    #[error("a webhook secret must decode to {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, this one has {0}")]
    Length(usize),
    #[error("cannot get random bytes for a new webhook secret")]
    Random(#[source] std::io::Error),
}

/// Why [`verify`] rejected a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp {0:?} is not a whole number of seconds")]
    Timestamp(String),
    #[error("webhook-timestamp is {0} s older than now, more than the tolerance")]
    TooOld(i64),
    #[error("webhook-timestamp is {0} s ahead of now, more than the tolerance")]
    TooNew(i64),
    #[error("no v1 signature in webhook-signature matches")]
    NoMatch,
}

/// An HMAC key, as a subscriber's `whsec_<base64>` secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// A new random 32-byte secret from the operating system's generator.
    pub fn generate() -> Result<Secret, SecretError> {
        let mut key = vec![0u8; GENERATED_KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| SecretError::Random(random_error(e)))?;
        Ok(Secret { key })
    }

    /// The secret as `whsec_<base64>`, the form a subscriber is given.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn mac(&self) -> HmacSha256 {
        // Cannot fail: HMAC takes a key of any length.
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }
}

impl std::str::FromStr for Secret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Secret, SecretError> {
        let encoded = s.strip_prefix(SECRET_PREFIX).ok_or(SecretError::Prefix)?;
        let key = LENIENT.decode(encoded).map_err(SecretError::Base64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret { key })
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.key.len())
    }
}

/// The `webhook-signature` header value for one message: one `v1,<base64>` per
/// secret, space-separated. Empty when `secrets` is.
pub fn sign(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| {
            let tag = signed_content(secret, msg_id, &timestamp.to_string(), body)
                .finalize()
                .into_bytes();
            format!("{VERSION},{}", STANDARD.encode(tag))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a received message as a subscriber would: the timestamp is within
/// `tolerance` of `now` (unix seconds) and at least one `v1` signature in the
/// `webhook-signature` value matches. Other versions and malformed entries are
/// skipped, as the spec asks, so that new schemes can be added beside `v1`.
pub fn verify(
    secret: &Secret,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| VerifyError::Timestamp(timestamp.to_string()))?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    let age = now.saturating_sub(ts);
    if age > tolerance {
        return Err(VerifyError::TooOld(age));
    }
    if -age > tolerance {
        return Err(VerifyError::TooNew(-age));
    }
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
        .any(|tag| {
            signed_content(secret, msg_id, timestamp, body)
                .verify_slice(&tag)
                .is_ok()
        });
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// The MAC over `<id>.<timestamp>.<body>`. The timestamp is passed as text so
/// that [`verify`] signs exactly the header it received.
fn signed_content(secret: &Secret, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = secret.mac();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// getrandom's error implements `std::error::Error` only with its `std` feature,
/// which we get from another crate, not by asking; an `io::Error` keeps the OS
/// error code without depending on that.
fn random_error(e: getrandom::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vector from the Standard Webhooks reference libraries' own sign tests
    // (libraries/python/tests/test_webhooks.py `test_sign_function`, and the Go
    // `TestWebhookSign`), and checked by hand with Python's hmac module.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn secret() -> Secret {
        SECRET.parse().unwrap()
    }

    fn check(sigs: &str, body: &[u8], now: i64) -> Result<(), VerifyError> {
        verify(
            &secret(),
            MSG_ID,
            &TIMESTAMP.to_string(),
            sigs,
            body,
            now,
            TOLERANCE,
        )
    }

    #[test]
    fn signs_the_published_test_vector() {
        assert_eq!(sign(&[secret()], MSG_ID, TIMESTAMP, BODY), EXPECTED);
    }

    #[test]
    fn verifies_the_published_test_vector() {
        assert_eq!(check(EXPECTED, BODY, TIMESTAMP), Ok(()));
        // The reference tests' "invalid signature": the vector with its last byte changed.
        assert_eq!(
            check(
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
                BODY,
                TIMESTAMP
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_fails() {
        assert_eq!(
            check(EXPECTED, br#"{"test": 2432232315}"#, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        let other_id = verify(
            &secret(),
            "msg_other",
            &TIMESTAMP.to_string(),
            EXPECTED,
            BODY,
            TIMESTAMP,
            TOLERANCE,
        );
        assert_eq!(other_id, Err(VerifyError::NoMatch));
        let ts = (TIMESTAMP + 1).to_string();
        let other_ts = verify(&secret(), MSG_ID, &ts, EXPECTED, BODY, TIMESTAMP, TOLERANCE);
        assert_eq!(other_ts, Err(VerifyError::NoMatch));
    }

    #[test]
    fn rotation_sends_one_signature_per_secret_and_each_verifies() {
        let old = secret();
        let new = Secret::generate().unwrap();
        let header = sign(&[new.clone(), old.clone()], MSG_ID, TIMESTAMP, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert_eq!(parts[1], EXPECTED);
        for s in [&old, &new] {
            let r = verify(s, MSG_ID, "1614265330", &header, BODY, TIMESTAMP, TOLERANCE);
            assert_eq!(r, Ok(()));
        }
        let stranger = Secret::generate().unwrap();
        let r = verify(
            &stranger,
            MSG_ID,
            "1614265330",
            &header,
            BODY,
            TIMESTAMP,
            TOLERANCE,
        );
        assert_eq!(r, Err(VerifyError::NoMatch));
    }

    #[test]
    fn other_versions_and_junk_entries_are_skipped() {
        // As in the reference tests' "multi sig" case.
        let sigs = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,{} v1,not-base64 junk {EXPECTED}",
            &EXPECTED[3..]
        );
        assert_eq!(check(&sigs, BODY, TIMESTAMP), Ok(()));
        // The right MAC under another version label does not count.
        assert_eq!(
            check(&format!("v2,{}", &EXPECTED[3..]), BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(check("", BODY, TIMESTAMP), Err(VerifyError::NoMatch));
    }

    #[test]
    fn timestamps_outside_the_tolerance_fail() {
        assert_eq!(check(EXPECTED, BODY, TIMESTAMP + 300), Ok(()));
        assert_eq!(check(EXPECTED, BODY, TIMESTAMP - 300), Ok(()));
        assert_eq!(
            check(EXPECTED, BODY, TIMESTAMP + 301),
            Err(VerifyError::TooOld(301))
        );
        assert_eq!(
            check(EXPECTED, BODY, TIMESTAMP - 301),
            Err(VerifyError::TooNew(301))
        );
        let r = verify(&secret(), MSG_ID, "soon", EXPECTED, BODY, 0, TOLERANCE);
        assert!(matches!(r, Err(VerifyError::Timestamp(_))), "{r:?}");
    }

    #[test]
    fn secrets_are_parsed_strictly_and_never_shown() {
        assert!(matches!(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<Secret>(),
            Err(SecretError::Prefix)
        ));
        let bad = "whsec_MfKQ9r8G*YqrTwjUPD8ILPZIo2LaLaSw".parse::<Secret>();
        assert!(matches!(bad, Err(SecretError::Base64(_))), "{bad:?}");
        // 16 bytes: too short for the spec's 24-byte minimum.
        let short = format!("whsec_{}", STANDARD.encode([7u8; 16]));
        assert!(matches!(
            short.parse::<Secret>(),
            Err(SecretError::Length(16))
        ));
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert!(matches!(
            long.parse::<Secret>(),
            Err(SecretError::Length(65))
        ));
        assert!(matches!(
            "whsec_".parse::<Secret>(),
            Err(SecretError::Length(0))
        ));
        let err = SecretError::Prefix.to_string();
        assert!(err.contains("whsec_"), "{err}");
        assert_eq!(format!("{:?}", secret()), "Secret(24 bytes, redacted)");
    }

    #[test]
    fn padding_is_optional() {
        let key = [42u8; 32];
        let padded = format!("whsec_{}", STANDARD.encode(key));
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(
            padded.parse::<Secret>().unwrap(),
            unpadded.parse::<Secret>().unwrap()
        );
    }

    #[test]
    fn generated_secrets_are_32_random_bytes_that_round_trip() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert_ne!(a, b);
        let text = a.to_whsec();
        assert!(text.starts_with("whsec_"), "{text}");
        let back: Secret = text.parse().unwrap();
        assert_eq!(back, a);
        assert_eq!(back.key.len(), 32);
    }

    #[test]
    fn several_secrets_in_one_call_match_single_calls() {
        let (a, b) = (secret(), Secret::generate().unwrap());
        let both = sign(&[a.clone(), b.clone()], MSG_ID, TIMESTAMP, BODY);
        let one = sign(&[a], MSG_ID, TIMESTAMP, BODY);
        let two = sign(&[b], MSG_ID, TIMESTAMP, BODY);
        assert_eq!(both, format!("{one} {two}"));
        assert_eq!(sign(&[], MSG_ID, TIMESTAMP, BODY), "");
    }
}
