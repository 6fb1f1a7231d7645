//! Byte sizes written the way people write them: `1048576`, `"512k"`, `"64m"`, `"2g"`.
//!
//! Suffixes are binary (k = 1024). Parsing never panics; an unknown suffix or an
//! overflow is an error that says what was given.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim().to_ascii_lowercase();
        let t = t.strip_suffix('b').unwrap_or(&t);
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, suffix) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| {
            format!("{text:?} is not a size (use e.g. 1048576, \"512k\", \"64m\", \"2g\")")
        })?;
        let unit: u64 = match suffix.trim() {
            "" => 1,
            "k" | "ki" => 1 << 10,
            "m" | "mi" => 1 << 20,
            "g" | "gi" => 1 << 30,
            "t" | "ti" => 1 << 40,
            other => {
                return Err(format!(
                    "{text:?} has an unknown size suffix {other:?} (use k, m, g or t)"
                ))
            }
        };
        n.checked_mul(unit)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, suffix) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if n >= unit && n.is_multiple_of(unit) {
                return write!(f, "{} {suffix}", n / unit);
            }
        }
        write!(f, "{n} bytes")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes: a whole number, or a string like \"64m\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative (got {v})")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ByteSize, E> {
                if v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 {
                    Ok(ByteSize(v as u64))
                } else {
                    Err(E::custom(format!(
                        "a size must be a whole number of bytes (got {v})"
                    )))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_suffixed_sizes() {
        assert_eq!(ByteSize::parse("1024").unwrap(), ByteSize(1024));
        assert_eq!(ByteSize::parse("64m").unwrap(), ByteSize(64 << 20));
        assert_eq!(ByteSize::parse("2G").unwrap(), ByteSize(2 << 30));
        assert_eq!(ByteSize::parse("512kb").unwrap(), ByteSize(512 << 10));
        assert_eq!(ByteSize::parse("1mi").unwrap(), ByteSize(1 << 20));
    }

    #[test]
    fn rejects_garbage_with_a_message() {
        assert!(ByteSize::parse("lots").unwrap_err().contains("not a size"));
        assert!(ByteSize::parse("5x")
            .unwrap_err()
            .contains("unknown size suffix"));
        assert!(ByteSize::parse("99999999999t")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        let v: ByteSize = serde_json::from_str("\"10m\"").unwrap();
        assert_eq!(v, ByteSize(10 << 20));
        let v: ByteSize = serde_json::from_str("4096").unwrap();
        assert_eq!(v, ByteSize(4096));
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert!(serde_json::from_str::<ByteSize>("true").is_err());
    }

    #[test]
    fn displays_round_units() {
        assert_eq!(ByteSize(64 << 20).to_string(), "64 MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 bytes");
    }
}
