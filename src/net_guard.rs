//! Which network addresses webhook deliveries may reach: the SSRF guard.
//!
//! A webhook URL is chosen by whoever submits a job, and the server that posts to it sits
//! inside someone's network, so by default only public unicast addresses are reachable.
//! Loopback, private (RFC 1918, ULA), link-local (which holds the cloud metadata
//! endpoints), CGNAT, unspecified, multicast and reserved ranges are refused unless the
//! operator lists them with `--webhook-allow` (a host name, an address or a CIDR).
//!
//! Two checks use this: the API refuses a URL whose literal host is obviously refused
//! (422 at submission), and the deliverer resolves the host itself, vets every address,
//! and then connects only to those addresses, so a DNS answer that changes between the
//! check and the connection (rebinding) cannot move the request elsewhere.
//!
//! Pure policy and resolution: no HTTP, no queue.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use url::{Host, Url};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// What `--webhook-allow` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Host names whose every address is allowed (lower case, no trailing dot).
    hosts: Vec<String>,
    /// Address ranges allowed whatever name led to them.
    nets: Vec<IpNet>,
}

impl Allowlist {
    /// Parses entries such as `127.0.0.1`, `10.0.0.0/8`, `::1`, `hooks.internal`.
    pub fn parse<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self, String> {
        let mut list = Self::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            if let Ok(net) = entry.parse::<IpNet>() {
                list.nets.push(net.trunc());
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if entry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                list.hosts
                    .push(entry.trim_end_matches('.').to_ascii_lowercase());
            } else {
                return Err(format!(
                    "--webhook-allow '{entry}' is neither a host name, an address nor a CIDR"
                ));
            }
        }
        Ok(list)
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// Why an address is refused, or `None` for a public unicast address.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "a cloud metadata address",
        _ if a == 0 => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_private() => "a private address",
        _ if ip.is_link_local() => "a link-local address",
        _ if a == 100 && (64..128).contains(&b) => "a shared (CGNAT) address",
        _ if ip.is_multicast() => "a multicast address",
        _ if ip.is_broadcast() || a >= 240 => "a reserved address",
        // IETF protocol assignments (192.0.0.0/24) and benchmarking (198.18.0.0/15).
        _ if a == 192 && b == 0 && c == 0 => "a reserved address",
        _ if a == 198 && (b == 18 || b == 19) => "a reserved address",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address are judged by it: mapped (::ffff:a.b.c.d),
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) all end up at that IPv4 host.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return refused_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return refused_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    Some(match () {
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "a cloud metadata address",
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        // Deprecated IPv4-compatible addresses (::a.b.c.d).
        _ if s[..6] == [0, 0, 0, 0, 0, 0] => "a reserved address",
        _ if (s[0] & 0xfe00) == 0xfc00 => "a private (unique local) address",
        _ if (s[0] & 0xffc0) == 0xfe80 => "a link-local address",
        _ if (s[0] & 0xffc0) == 0xfec0 => "a site-local address",
        _ if ip.is_multicast() => "a multicast address",
        _ => return None,
    })
}

/// Why a webhook URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    BadUrl(String),
    #[error("{host} is {why}; list it with --webhook-allow to deliver there")]
    Address { host: String, why: &'static str },
    #[error("{host} resolves to {ip}, {why}; list it with --webhook-allow to deliver there")]
    Resolved {
        host: String,
        ip: IpAddr,
        why: &'static str,
    },
    #[error("{host} cannot be resolved: {error}")]
    Unresolvable { host: String, error: String },
}

/// Parses a webhook URL: absolute `http` or `https` with a host, bounded in length.
pub fn parse_url(raw: &str) -> Result<Url, Refused> {
    if raw.len() > MAX_URL_LEN {
        return Err(Refused::BadUrl(format!(
            "the URL is longer than {MAX_URL_LEN} characters"
        )));
    }
    let url = Url::parse(raw.trim()).map_err(|e| Refused::BadUrl(format!("not a URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Refused::BadUrl(format!(
            "the scheme must be http or https, not '{}'",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(Refused::BadUrl("the URL has no host".into()));
    }
    Ok(url)
}

/// The check at submission: refuses a URL whose host is an address the guard refuses
/// (names are judged when they are resolved, at delivery).
pub fn check_literal(url: &Url, allow: &Allowlist) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    vet(&host_text(url), ip, allow).map_err(|why| Refused::Address {
        host: host_text(url),
        why,
    })
}

/// The host as it appears in the URL (brackets stripped from IPv6).
fn host_text(url: &Url) -> String {
    url.host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string()
}

fn vet(host: &str, ip: IpAddr, allow: &Allowlist) -> Result<(), &'static str> {
    match refused_range(ip) {
        Some(why) if !allow.allows_host(host) && !allow.allows_ip(ip) => Err(why),
        _ => Ok(()),
    }
}

/// Where a delivery may connect: the host name (for TLS and `Host`) and the vetted
/// addresses to pin it to; `None` addresses when the URL's host is itself an address.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Resolves the URL's host and vets every address it yields; one refused address refuses
/// the whole host (a name that also points inward is not to be trusted).
pub async fn resolve(url: &Url, allow: &Allowlist) -> Result<Target, Refused> {
    let host = host_text(url);
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(Host::Ipv4(v4)) => vec![SocketAddr::new(IpAddr::V4(v4), port)],
        Some(Host::Ipv6(v6)) => vec![SocketAddr::new(IpAddr::V6(v6), port)],
        Some(Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| Refused::Unresolvable {
                host: host.clone(),
                error: e.to_string(),
            })?
            .collect(),
        None => return Err(Refused::BadUrl("the URL has no host".into())),
    };
    if addrs.is_empty() {
        return Err(Refused::Unresolvable {
            host,
            error: "no addresses".into(),
        });
    }
    let literal = !matches!(url.host(), Some(Host::Domain(_)));
    for addr in &addrs {
        if let Err(why) = vet(&host, addr.ip(), allow) {
            return Err(if literal {
                Refused::Address { host, why }
            } else {
                Refused::Resolved {
                    host,
                    ip: addr.ip(),
                    why,
                }
            });
        }
    }
    Ok(Target { host, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn inward_addresses_are_refused_and_public_ones_pass() {
        for inward in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(refused_range(ip(inward)).is_some(), "{inward} passed");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert_eq!(refused_range(ip(public)), None, "{public} refused");
        }
        assert_eq!(
            refused_range(ip("169.254.169.254")),
            Some("a cloud metadata address")
        );
        assert_eq!(
            refused_range(ip("fd00:ec2::254")),
            Some("a cloud metadata address")
        );
    }

    #[test]
    fn the_allowlist_takes_hosts_addresses_and_ranges() {
        let allow =
            Allowlist::parse(["127.0.0.1", "10.0.0.0/8", "Hooks.Internal.", "[::1]"]).unwrap();
        assert!(vet("x", ip("127.0.0.1"), &allow).is_ok());
        assert!(vet("x", ip("127.0.0.2"), &allow).is_err());
        assert!(vet("x", ip("10.9.8.7"), &allow).is_ok());
        assert!(vet("x", ip("::1"), &allow).is_ok());
        assert!(vet("hooks.internal", ip("192.168.0.9"), &allow).is_ok());
        assert!(vet("other.internal", ip("192.168.0.9"), &allow).is_err());
        assert!(Allowlist::parse(["not a host!"]).is_err());
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        let none = Allowlist::default();
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "http://",
            "mailto:a@b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        for literal in [
            "http://127.0.0.1:9000/hook",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/",
            "http://[fd00:ec2::254]/",
            "http://2130706433/",
        ] {
            let url = parse_url(literal).unwrap();
            assert!(check_literal(&url, &none).is_err(), "{literal} passed");
        }
        let url = parse_url("https://hooks.example.com/sdq").unwrap();
        assert!(check_literal(&url, &none).is_ok());
        let allowed = Allowlist::parse(["127.0.0.1"]).unwrap();
        let url = parse_url("http://127.0.0.1:9000/hook").unwrap();
        assert!(check_literal(&url, &allowed).is_ok());
    }

    #[tokio::test]
    async fn names_are_vetted_by_what_they_resolve_to() {
        let url = parse_url("http://localhost:9/hook").unwrap();
        let refused = resolve(&url, &Allowlist::default()).await.unwrap_err();
        assert!(matches!(refused, Refused::Resolved { .. }), "{refused:?}");
        assert!(refused.to_string().contains("loopback"), "{refused}");
        let allowed = Allowlist::parse(["localhost"]).unwrap();
        let target = resolve(&url, &allowed).await.unwrap();
        assert!(target
            .addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9));
    }
}
