//! Networks as written in the config: a CIDR network (`10.0.0.0/8`, `fd00::/8`) or
//! a bare address, which means that one address (`127.0.0.1` is `127.0.0.1/32`).
//!
//! Invariant: a parsed network is truncated to its prefix (`10.1.2.3/8` is
//! `10.0.0.0/8`), so comparing two of them compares what they contain.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not an address or a network in CIDR notation (like 10.0.0.0/8 or fd00::/8)")]
pub struct NetworkError {
    value: String,
    #[source]
    source: ipnet::AddrParseError,
}

/// One entry of a network allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub IpNet);

impl std::str::FromStr for Network {
    type Err = NetworkError;

    fn from_str(value: &str) -> Result<Network, NetworkError> {
        let value = value.trim();
        if let Ok(addr) = value.parse::<IpAddr>() {
            return Ok(Network(IpNet::from(addr)));
        }
        value
            .parse::<IpNet>()
            .map(|net| Network(net.trunc()))
            .map_err(|source| NetworkError {
                value: value.to_string(),
                source,
            })
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_parsed_with_clear_errors() {
        let nets: Vec<String> = [" 192.168.0.0/16 ", "::1", "10.1.2.3/8"]
            .iter()
            .map(|s| s.parse::<Network>().unwrap().0.to_string())
            .collect();
        assert_eq!(nets, ["192.168.0.0/16", "::1/128", "10.0.0.0/8"]);
        for bad in ["10.0.0.0/33", "localhost", "", "10.0.0/8", "fd00::/129"] {
            let err = bad.parse::<Network>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
            assert!(std::error::Error::source(&err).is_some());
        }
    }
}
