//! The address a request comes from, as throttling counts it.
//!
//! Behind a load balancer every request arrives from the balancer, so keying
//! on the TCP peer would let one attacker lock everyone out. The peer is
//! trusted to report the client only when it is one of `TRUSTED_PROXIES`:
//! then `X-Forwarded-For` is read from the right (each proxy appends the
//! address it saw) and the first hop that is not a trusted proxy is the
//! client. Anything left of that hop was written by the client itself and
//! is ignored. IPv6 clients are counted by their /64, which one subscriber
//! usually holds whole.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::{IpNet, Ipv6Net};

use crate::state::AppState;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address, bucketed (IPv6 by /64); `None` when the server was
/// not given connection info (only in-process tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(Self(peer.map(|peer| {
            client_addr(peer, &parts.headers, &state.settings.trusted_proxies)
        })))
    }
}

/// The client behind `peer` (see the module docs), bucketed.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|net| net.contains(&addr));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return bucket(client);
    }
    // Header order is hop order; within one header, left to right.
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        // A hop that does not parse was not written by a proxy we trust to
        // write addresses: the last trusted hop stands for the client.
        let Ok(addr) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = addr.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    bucket(client)
}

/// IPv6 addresses by their /64; IPv4 as they are.
fn bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => Ipv6Net::new(v6, 64).map_or(addr, |net| IpAddr::V6(net.trunc().addr())),
    }
}

/// Parses one `TRUSTED_PROXIES` entry: a CIDR, or a bare address (one host).
pub fn parse_trusted_proxy(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{value:?} is not an address or a CIDR such as 10.0.0.0/8"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(v).expect("header"));
        }
        headers
    }

    fn proxies(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|p| parse_trusted_proxy(p).expect("proxy"))
            .collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let spoofed = forwarded(&["203.0.113.7"]);
        assert_eq!(
            client_addr(ip("198.51.100.1"), &spoofed, &trusted),
            ip("198.51.100.1")
        );
        // With no trusted proxies the header is never read.
        assert_eq!(client_addr(ip("10.0.0.1"), &spoofed, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn through_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "192.0.2.10"]);
        // The client forged the leftmost entry; the edge proxy appended the
        // real address, the inner proxy appended the edge.
        let chain = forwarded(&["1.2.3.4, 203.0.113.7", "192.0.2.10"]);
        assert_eq!(
            client_addr(ip("10.1.2.3"), &chain, &trusted),
            ip("203.0.113.7")
        );
        // All hops trusted: the leftmost stands for the client.
        let internal = forwarded(&["10.9.9.9, 192.0.2.10"]);
        assert_eq!(
            client_addr(ip("10.1.2.3"), &internal, &trusted),
            ip("10.9.9.9")
        );
        // No header at all: the proxy itself.
        assert_eq!(
            client_addr(ip("10.1.2.3"), &HeaderMap::new(), &trusted),
            ip("10.1.2.3")
        );
        // Garbage stops the walk at the last trusted hop.
        let garbage = forwarded(&["203.0.113.7, not-an-ip"]);
        assert_eq!(
            client_addr(ip("10.1.2.3"), &garbage, &trusted),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn ipv6_clients_are_bucketed_by_slash_64_and_mapped_ipv4_is_ipv4() {
        let a = client_addr(ip("2001:db8:1:2:aaaa::1"), &HeaderMap::new(), &[]);
        let b = client_addr(ip("2001:db8:1:2:bbbb::9"), &HeaderMap::new(), &[]);
        let c = client_addr(ip("2001:db8:1:3::1"), &HeaderMap::new(), &[]);
        assert_eq!(a, b);
        assert_eq!(a, ip("2001:db8:1:2::"));
        assert_ne!(a, c);
        let trusted = proxies(&["127.0.0.1"]);
        assert_eq!(
            client_addr(
                ip("::ffff:127.0.0.1"),
                &forwarded(&["203.0.113.9"]),
                &trusted
            ),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxy_entries_parse_as_cidrs_or_hosts() {
        assert_eq!(
            parse_trusted_proxy("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().expect("net"))
        );
        assert_eq!(
            parse_trusted_proxy(" 10.1.2.3/8 "),
            Ok("10.0.0.0/8".parse().expect("net"))
        );
        assert_eq!(
            parse_trusted_proxy("192.0.2.1"),
            Ok("192.0.2.1/32".parse().expect("net"))
        );
        assert_eq!(
            parse_trusted_proxy("::1"),
            Ok("::1/128".parse().expect("net"))
        );
        assert!(parse_trusted_proxy("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxy("proxy.internal").is_err());
    }
}
