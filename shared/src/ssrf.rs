//! The SSRF guard for every outbound call to a tenant's URL (n8n, event
//! webhooks).
//!
//! A tenant chooses the URL, so without a guard it could make the worker
//! reach internal services or the cloud metadata endpoint. Two checks:
//! - [`check_url`] before any request: scheme (`https` only in production),
//!   no credentials in the URL, and literal IP hosts against the policy
//!   (reqwest does not call the resolver for literal IPs);
//! - [`resolve_checked`], which the automation-worker's reqwest DNS resolver
//!   (`GuardedResolver`) calls: it resolves the name and
//!   refuses it when any address is outside the policy. The addresses it
//!   returns are the only ones the connector can use, so the check is on the
//!   addresses actually connected to (no time-of-check/time-of-use gap), and
//!   a public name pointing at `127.0.0.1` is refused like `127.0.0.1` itself.
//!
//! Redirects are never followed (the client is built with `Policy::none()`),
//! so a public host cannot bounce a request to an internal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// The cloud metadata address (AWS, GCP, Azure, OpenStack...).
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Which destinations are allowed.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Lift the address check (local development and tests only).
    pub allow_private: bool,
    /// Refuse `http://`.
    pub https_only: bool,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    InvalidUrl(String),
    /// The address stays out of the message: it goes back to the tenant,
    /// and would map the inside of the network for them.
    #[error("{host} resolves to a loopback, private, link-local or metadata address")]
    Address { host: String, ip: IpAddr },
    #[error("cannot resolve {host}: {message}")]
    Dns { host: String, message: String },
}

/// True when `ip` must never be reached from the worker (unless private
/// networks are allowed).
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => is_refused_v6(v6),
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip == METADATA_V4
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 0.0.0.0/8 "this network"
        || a == 0
        // 100.64.0.0/10 carrier-grade NAT (shared address space)
        || (a == 100 && (64..=127).contains(&b))
        // 192.0.0.0/24 IETF protocol assignments
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        // 198.18.0.0/15 benchmarking
        || (a == 198 && (b == 18 || b == 19))
        // 240.0.0.0/4 reserved
        || a >= 240
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    // An IPv4 address in IPv6 clothing is judged as IPv4.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_refused_v4(v4);
    }
    let segments = ip.segments();
    // Ranges that carry an IPv4 address a gateway may forward to, refused
    // whatever the address: local-use NAT64 (64:ff9b:1::/48), 6to4
    // (2002::/16), Teredo (2001::/32), IPv4-translated (::ffff:0:0/96).
    if (segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1)
        || segments[0] == 0x2002
        || (segments[0] == 0x2001 && segments[1] == 0)
        || (segments[..4] == [0, 0, 0, 0] && segments[4] == 0xffff && segments[5] == 0)
    {
        return true;
    }
    // NAT64 (64:ff9b::/96) embeds an IPv4 address in the last 32 bits.
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
        let o = ip.octets();
        return is_refused_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local (includes AWS's fd00:ec2::254 metadata)
        || (segments[0] & 0xfe00) == 0xfc00
        // fe80::/10 link-local
        || (segments[0] & 0xffc0) == 0xfe80
        // fec0::/10 deprecated site-local
        || (segments[0] & 0xffc0) == 0xfec0
        // 2001:db8::/32 documentation
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        // ::/96 IPv4-compatible (deprecated)
        || (segments[..6] == [0, 0, 0, 0, 0, 0])
}

impl Policy {
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        if !self.allow_private && is_refused(ip) {
            return Err(Refusal::Address {
                host: host.to_owned(),
                ip,
            });
        }
        Ok(())
    }
}

/// Checks a URL before it is requested: scheme, credentials, literal IPs.
/// Names are checked later, on the resolved addresses ([`resolve_checked`]).
pub fn check_url(policy: &Policy, url: &Url) -> Result<(), Refusal> {
    match url.scheme() {
        "https" => {}
        "http" if !policy.https_only => {}
        "http" => {
            return Err(Refusal::InvalidUrl(
                "http:// is refused in production; use https://".into(),
            ));
        }
        other => {
            return Err(Refusal::InvalidUrl(format!(
                "scheme {other} is not allowed; use https://"
            )));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::InvalidUrl(
            "credentials in the URL are not allowed; use auth_type and secret".into(),
        ));
    }
    match url.host() {
        None => Err(Refusal::InvalidUrl("the URL has no host".into())),
        Some(Host::Ipv4(ip)) => policy.check_ip(&ip.to_string(), IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => policy.check_ip(&ip.to_string(), IpAddr::V6(ip)),
        Some(Host::Domain(_)) => Ok(()),
    }
}

/// Resolves `host` and refuses it when any address is outside the policy:
/// refusing the whole name (not just the bad addresses) keeps a name that
/// mixes public and private addresses from reaching the private one.
pub async fn resolve_checked(policy: &Policy, host: &str) -> Result<Vec<SocketAddr>, Refusal> {
    let dns = |message: String| Refusal::Dns {
        host: host.to_owned(),
        message,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| dns(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(dns("no addresses".into()));
    }
    for addr in &addrs {
        policy.check_ip(host, addr.ip())?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Policy = Policy {
        allow_private: false,
        https_only: true,
    };
    const DEV: Policy = Policy {
        allow_private: true,
        https_only: false,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn refused_ranges() {
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
        ] {
            assert!(is_refused(ip(bad)), "{bad} allowed");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert!(!is_refused(ip(good)), "{good} refused");
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn literal_ips_schemes_and_credentials() {
        for bad in [
            "https://127.0.0.1/",
            "https://10.1.2.3:5678",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00:ec2::254]/",
        ] {
            assert!(
                matches!(check_url(&STRICT, &url(bad)), Err(Refusal::Address { .. })),
                "{bad} allowed"
            );
        }
        assert!(matches!(
            check_url(&STRICT, &url("http://n8n.example.com")),
            Err(Refusal::InvalidUrl(_))
        ));
        assert!(matches!(
            check_url(&DEV, &url("ftp://n8n.example.com")),
            Err(Refusal::InvalidUrl(_))
        ));
        assert!(matches!(
            check_url(&DEV, &url("https://user:pw@n8n.example.com")),
            Err(Refusal::InvalidUrl(_))
        ));
        assert!(check_url(&STRICT, &url("https://n8n.example.com")).is_ok());
        assert!(check_url(&DEV, &url("http://127.0.0.1:5678")).is_ok());
    }

    #[test]
    fn ipv6_ranges_that_carry_ipv4_are_refused() {
        // Each embeds a public IPv4 address (8.8.8.8), so only the range
        // itself can be what refuses it.
        for bad in [
            "64:ff9b:1::808:808",  // local-use NAT64
            "2002:808:808::1",     // 6to4
            "2001:0:4136:e378::1", // Teredo
            "::ffff:0:808:808",    // IPv4-translated
        ] {
            assert!(is_refused(ip(bad)), "{bad} allowed");
        }
        // Beside them, global unicast stays allowed.
        for good in ["2001:4860:4860::8888", "2003::1", "64:ff9b:2::1"] {
            assert!(!is_refused(ip(good)), "{good} refused");
        }
    }

    #[test]
    fn a_refusal_does_not_name_the_address() {
        let refusal = check_url(&STRICT, &url("https://10.1.2.3/")).expect_err("refused");
        assert!(!refusal.to_string().contains("10.1.2.3:"), "{refusal}");
        let refusal = Refusal::Address {
            host: "n8n.example.com".into(),
            ip: ip("10.9.8.7"),
        };
        assert!(!refusal.to_string().contains("10.9.8.7"), "{refusal}");
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused() {
        // `localhost` resolves locally (no traffic leaves the machine).
        let refused = resolve_checked(&STRICT, "localhost").await;
        assert!(
            matches!(refused, Err(Refusal::Address { .. })),
            "{refused:?}"
        );
        let allowed = resolve_checked(&DEV, "localhost").await;
        assert!(allowed.is_ok(), "{allowed:?}");
    }
}
