//! The SSRF guard: which addresses the worker may connect to on someone else's
//! say: a webhook subscriber's URL (`webhooks.allow_networks`) or a job's git URL
//! (`policy.git_allow_networks`).
//!
//! Such a URL is untrusted input that would otherwise let anyone who can add a
//! subscriber or submit a job make the worker send requests into its own network
//! (Redis, the Docker API, the cloud metadata service). Pure: no I/O; the caller
//! resolves names and checks every address before connecting to any. A leaf: it
//! uses only [`crate::config::Network`], so `webhook` and `source` both use it.
//!
//! Invariants:
//!
//! - An address is refused when it is in a non-public range (loopback, private,
//!   link-local, shared/CGNAT, multicast, unspecified, broadcast, documentation,
//!   benchmarking, reserved), unless the guard's allow-list contains it.
//! - A refusal names the setting of that allow-list, so an operator knows what to
//!   change.
//! - An IPv6 address that carries an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//!   IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is
//!   judged by the IPv4 address it carries, so `::ffff:127.0.0.1` is loopback.
//! - The cloud metadata addresses (169.254.169.254, fd00:ec2::254) are named as
//!   such, and only an allow entry for that single address lets them through: an
//!   operator who allows `169.254.0.0/16` for a link-local service has not thereby
//!   opened the instance's credentials to every subscriber.

use crate::config::Network;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The allow-list of webhook deliveries, named by [`Guard::new`]'s refusals.
pub const WEBHOOK_ALLOW_KEY: &str = "webhooks.allow_networks";

const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Loopback,
    Private,
    LinkLocal,
    Metadata,
    SharedCgnat,
    Multicast,
    Unspecified,
    ThisNetwork,
    Broadcast,
    Documentation,
    Benchmarking,
    Reserved,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::Loopback => "a loopback address",
            Rule::Private => "a private address",
            Rule::LinkLocal => "a link-local address",
            Rule::Metadata => "the cloud metadata address",
            Rule::SharedCgnat => "a shared (carrier-grade NAT) address",
            Rule::Multicast => "a multicast address",
            Rule::Unspecified => "the unspecified address",
            Rule::ThisNetwork => "a \"this network\" address (0.0.0.0/8)",
            Rule::Broadcast => "the broadcast address",
            Rule::Documentation => "a documentation address",
            Rule::Benchmarking => "a benchmarking address",
            Rule::Reserved => "a reserved address",
        })
    }
}

/// A refused address, the rule that refused it, and the setting that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", refusal_text(*.addr, *.rule, self.setting))]
pub struct Refused {
    pub addr: IpAddr,
    pub rule: Rule,
    pub setting: &'static str,
}

fn refusal_text(addr: IpAddr, rule: Rule, setting: &str) -> String {
    let carried = match carried_v4(addr) {
        Some(v4) => format!(" (it carries the IPv4 address {v4})"),
        None => String::new(),
    };
    let how = if rule == Rule::Metadata {
        format!("allow exactly this address in {setting} if you mean it (a wider network does not)")
    } else {
        format!("allow it with {setting}")
    };
    format!("{addr}{carried} is {rule}; {how}")
}

/// The guard with its exceptions, built once from the configuration.
#[derive(Debug, Clone)]
pub struct Guard {
    allow: Vec<IpNet>,
    /// The setting `allow` came from, named in refusals.
    setting: &'static str,
}

/// No exceptions; refusals name `webhooks.allow_networks`.
impl Default for Guard {
    fn default() -> Guard {
        Guard::new(&[])
    }
}

impl Guard {
    /// A webhook guard that lets through these networks (`webhooks.allow_networks`) too.
    pub fn new(allow: &[Network]) -> Guard {
        Guard::for_setting(WEBHOOK_ALLOW_KEY, allow)
    }

    /// A guard that lets through `allow` too, which came from `setting` (named in
    /// its refusals, e.g. `policy.git_allow_networks`).
    pub fn for_setting(setting: &'static str, allow: &[Network]) -> Guard {
        Guard {
            allow: allow.iter().map(|n| n.0).collect(),
            setting,
        }
    }

    /// The setting named in refusals.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    pub fn allow_networks(&self) -> &[IpNet] {
        &self.allow
    }

    /// `Ok` when every one of a name's addresses passes: one refused address
    /// refuses the name (a resolver may answer with any of them).
    pub fn check_all(&self, addrs: impl IntoIterator<Item = IpAddr>) -> Result<(), Refused> {
        addrs.into_iter().try_for_each(|addr| self.check(addr))
    }

    /// `Ok` when a delivery may connect to `addr`.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refused> {
        let Some(rule) = classify(addr) else {
            return Ok(());
        };
        let judged = carried_v4(addr).map(IpAddr::V4);
        let allowed = if rule == Rule::Metadata {
            self.allow.iter().any(|net| {
                let single = net.prefix_len() == net.max_prefix_len();
                single && (net.addr() == addr || Some(net.addr()) == judged)
            })
        } else {
            self.allow
                .iter()
                .any(|net| net.contains(&addr) || judged.is_some_and(|v4| net.contains(&v4)))
        };
        if allowed {
            Ok(())
        } else {
            Err(Refused {
                addr,
                rule,
                setting: self.setting,
            })
        }
    }
}

/// The rule an address breaks, or `None` for a public address.
pub fn classify(addr: IpAddr) -> Option<Rule> {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match carried_v4(addr) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Rule> {
    let [a, b, c, _] = ip.octets();
    // Order matters where ranges nest: the metadata address inside link-local,
    // unspecified inside 0/8, broadcast inside 240/4.
    let rule = if ip == METADATA_V4 {
        Rule::Metadata
    } else if ip.is_unspecified() {
        Rule::Unspecified
    } else if a == 0 {
        // Linux treats 0.x.x.x destinations as this host.
        Rule::ThisNetwork
    } else if ip.is_loopback() {
        Rule::Loopback
    } else if ip.is_private() {
        Rule::Private
    } else if ip.is_link_local() {
        Rule::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        Rule::SharedCgnat
    } else if ip.is_multicast() {
        Rule::Multicast
    } else if ip.is_broadcast() {
        Rule::Broadcast
    } else if ip.is_documentation() {
        Rule::Documentation
    } else if a == 198 && (b & 0xfe) == 18 {
        Rule::Benchmarking
    } else if a >= 240 || (a == 192 && b == 0 && c == 0) || (a == 192 && b == 88 && c == 99) {
        // 240/4 future use, 192.0.0/24 IETF protocol assignments, 192.88.99/24
        // the retired 6to4 relay anycast.
        Rule::Reserved
    } else {
        return None;
    };
    Some(rule)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Rule> {
    let s = ip.segments();
    let rule = if ip == METADATA_V6 {
        Rule::Metadata
    } else if ip.is_unspecified() {
        Rule::Unspecified
    } else if ip.is_loopback() {
        Rule::Loopback
    } else if (s[0] & 0xfe00) == 0xfc00 {
        // fc00::/7 unique local
        Rule::Private
    } else if (s[0] & 0xffc0) == 0xfec0 {
        // fec0::/10 site-local: deprecated, but still routed inside some sites.
        Rule::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Rule::LinkLocal
    } else if ip.is_multicast() {
        Rule::Multicast
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] < 0x1000) {
        // 2001:db8::/32 and 3fff::/20 (RFC 9637)
        Rule::Documentation
    } else if s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0 {
        // 2001:2::/48
        Rule::Benchmarking
    } else if (s[0] == 0x0100 && s[1..4] == [0, 0, 0])
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001)
    {
        // 100::/64 discard-only, 64:ff9b:1::/48 local-use NAT64.
        Rule::Reserved
    } else {
        return None;
    };
    Some(rule)
}

/// The IPv4 address an IPv6 address stands for, in the forms that reach an IPv4
/// host: mapped, compatible, well-known NAT64 prefix, 6to4.
fn carried_v4(addr: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = addr else {
        return None;
    };
    let s = v6.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // ::a.b.c.d (deprecated IPv4-compatible); not :: or ::1, which are IPv6's own.
    if s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        return Some(low(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(low(s[1], s[2]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str]) -> Guard {
        let nets: Vec<Network> = allow.iter().map(|n| n.parse().unwrap()).collect();
        Guard::new(&nets)
    }

    fn refused(guard: &Guard, addr: &str) -> Option<Rule> {
        guard
            .check(addr.parse().unwrap())
            .err()
            .map(|refusal| refusal.rule)
    }

    #[test]
    fn non_public_ranges_are_refused_by_rule() {
        let g = Guard::default();
        let cases = [
            ("127.0.0.1", Rule::Loopback),
            ("127.255.0.2", Rule::Loopback),
            ("::1", Rule::Loopback),
            ("10.1.2.3", Rule::Private),
            ("172.16.0.1", Rule::Private),
            ("172.31.255.255", Rule::Private),
            ("192.168.1.1", Rule::Private),
            ("fc00::1", Rule::Private),
            ("fd12:3456::1", Rule::Private),
            ("fec0::1", Rule::Private),
            ("169.254.1.1", Rule::LinkLocal),
            ("fe80::1", Rule::LinkLocal),
            ("169.254.169.254", Rule::Metadata),
            ("fd00:ec2::254", Rule::Metadata),
            ("100.64.0.1", Rule::SharedCgnat),
            ("100.127.255.254", Rule::SharedCgnat),
            ("224.0.0.1", Rule::Multicast),
            ("239.255.255.250", Rule::Multicast),
            ("ff02::1", Rule::Multicast),
            ("0.0.0.0", Rule::Unspecified),
            ("::", Rule::Unspecified),
            ("0.1.2.3", Rule::ThisNetwork),
            ("255.255.255.255", Rule::Broadcast),
            ("192.0.2.1", Rule::Documentation),
            ("198.51.100.7", Rule::Documentation),
            ("203.0.113.9", Rule::Documentation),
            ("2001:db8::1", Rule::Documentation),
            ("3fff::1", Rule::Documentation),
            ("3fff:fff::1", Rule::Documentation),
            ("198.18.0.1", Rule::Benchmarking),
            ("198.19.255.255", Rule::Benchmarking),
            ("2001:2::1", Rule::Benchmarking),
            ("240.0.0.1", Rule::Reserved),
            ("192.0.0.8", Rule::Reserved),
            ("100::1", Rule::Reserved),
        ];
        for (addr, rule) in cases {
            assert_eq!(refused(&g, addr), Some(rule), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let g = Guard::default();
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "169.253.255.255",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "3fff:1000::1",
        ] {
            assert_eq!(refused(&g, addr), None, "{addr}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_are_judged_by_the_ipv4_address() {
        let g = Guard::default();
        assert_eq!(refused(&g, "::ffff:127.0.0.1"), Some(Rule::Loopback));
        assert_eq!(refused(&g, "::ffff:10.0.0.1"), Some(Rule::Private));
        assert_eq!(refused(&g, "::ffff:169.254.169.254"), Some(Rule::Metadata));
        assert_eq!(refused(&g, "::ffff:100.64.1.1"), Some(Rule::SharedCgnat));
        assert_eq!(refused(&g, "::127.0.0.1"), Some(Rule::Loopback));
        assert_eq!(refused(&g, "64:ff9b::a00:1"), Some(Rule::Private));
        assert_eq!(refused(&g, "2002:7f00:1::1"), Some(Rule::Loopback));
        let msg = g
            .check("::ffff:127.0.0.1".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(
                "::ffff:127.0.0.1 (it carries the IPv4 address 127.0.0.1) is a loopback address"
            ),
            "{msg}"
        );
    }

    #[test]
    fn the_message_names_the_address_the_rule_and_the_setting() {
        let g = Guard::default();
        let msg = g
            .check("127.0.0.2".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "127.0.0.2 is a loopback address; allow it with webhooks.allow_networks"
        );
        let msg = g
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("169.254.169.254 is the cloud metadata address; "),
            "{msg}"
        );
    }

    #[test]
    fn a_guard_names_the_setting_it_was_made_from() {
        let nets: Vec<Network> = vec!["10.0.0.0/8".parse().unwrap()];
        let g = Guard::for_setting("policy.git_allow_networks", &nets);
        assert_eq!(refused(&g, "10.1.1.1"), None);
        let msg = g
            .check("127.0.0.2".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "127.0.0.2 is a loopback address; allow it with policy.git_allow_networks"
        );
        let msg = g
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("in policy.git_allow_networks if"), "{msg}");
    }

    #[test]
    fn allow_networks_open_exactly_what_they_contain() {
        let g = guard(&["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        assert_eq!(refused(&g, "127.0.0.1"), None);
        assert_eq!(refused(&g, "127.0.0.2"), Some(Rule::Loopback));
        assert_eq!(refused(&g, "10.200.3.4"), None);
        assert_eq!(refused(&g, "172.16.0.1"), Some(Rule::Private));
        assert_eq!(refused(&g, "fd12::1"), None);
        // An allowed IPv4 network covers the IPv6 forms of its addresses.
        assert_eq!(refused(&g, "::ffff:127.0.0.1"), None);
        assert_eq!(refused(&g, "::ffff:127.0.0.2"), Some(Rule::Loopback));
        // fd00::/8 contains fd00:ec2::254, but a network does not open the metadata address.
        assert_eq!(refused(&g, "fd00:ec2::254"), Some(Rule::Metadata));
    }

    #[test]
    fn the_metadata_address_needs_its_own_entry() {
        let wide = guard(&["169.254.0.0/16"]);
        assert_eq!(refused(&wide, "169.254.1.1"), None);
        assert_eq!(refused(&wide, "169.254.169.254"), Some(Rule::Metadata));
        let exact = guard(&["169.254.169.254"]);
        assert_eq!(refused(&exact, "169.254.169.254"), None);
        assert_eq!(refused(&exact, "::ffff:169.254.169.254"), None);
        let v6 = guard(&["fd00:ec2::254/128"]);
        assert_eq!(refused(&v6, "fd00:ec2::254"), None);
    }
}
