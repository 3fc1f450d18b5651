//! Who the client is behind proxies: the address that per-client limits count against.
//!
//! Each proxy appends the address it received the request from to `X-Forwarded-For`.
//! Reading the header from the right, every entry written by a proxy we trust is itself
//! trustworthy, up to the first address that is not one of ours: that is the client.
//! Entries further left were written by the client (or its proxies) and prove nothing,
//! so they are never used; a peer we do not trust gets no say at all.

use std::net::IpAddr;

/// The client's address, given the connecting `peer`, the request's `X-Forwarded-For`
/// value(s) and the proxies trusted to have written them.
pub fn client_addr(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for.unwrap_or_default().rsplit(',') {
        match entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            // A trusted proxy forwarded it: look one hop further left.
            Ok(ip) if is_trusted(ip, trusted) => client = ip,
            Ok(ip) => return ip,
            // Trusted proxies write addresses; anything else means the chain is broken
            // here, and the last trusted hop is as far as we can see.
            Err(_) => return client,
        }
    }
    client
}

/// The `X-Forwarded-For` value to pass upstream: the chain so far, with `peer` appended,
/// when the peer is a trusted proxy; only `peer` otherwise (a client cannot plant
/// addresses in it).
pub fn forwarded_for(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> String {
    let peer = peer.to_canonical();
    match forwarded_for.map(str::trim).filter(|f| !f.is_empty()) {
        Some(chain) if is_trusted(peer, trusted) => format!("{chain}, {peer}"),
        _ => peer.to_string(),
    }
}

/// Whether `ip` is one of `trusted`, comparing IPv4-mapped IPv6 addresses (a dual-stack
/// listener's view of an IPv4 peer, `::ffff:127.0.0.1`) as the IPv4 address they are.
fn is_trusted(ip: IpAddr, trusted: &[IpAddr]) -> bool {
    trusted.iter().any(|t| t.to_canonical() == ip.to_canonical())
}

/// The key a per-address limit counts under: an IPv4 address, or an IPv6 address's /64
/// (one subscriber's usual allocation: counting single IPv6 addresses would give anyone
/// with a /64 billions of fresh budgets).
pub fn limit_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The joined `X-Forwarded-For` headers of a request (several headers count as one
/// comma-separated list), or `None`.
pub fn forwarded_header(headers: &salvo::http::HeaderMap) -> Option<String> {
    let parts: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_wrote() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        // Untrusted peer: its header is ignored.
        assert_eq!(client_addr(ip("203.0.113.9"), Some("1.2.3.4"), &trusted), ip("203.0.113.9"));
        // Trusted peer: the right-most untrusted entry, not a spoofed one to its left.
        assert_eq!(client_addr(ip("10.0.0.1"), Some("6.6.6.6, 198.51.100.7"), &trusted), ip("198.51.100.7"));
        assert_eq!(client_addr(ip("10.0.0.1"), Some("198.51.100.7, 10.0.0.2"), &trusted), ip("198.51.100.7"));
        // No header, or only trusted hops: the left-most trusted one.
        assert_eq!(client_addr(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
        assert_eq!(client_addr(ip("10.0.0.1"), Some("10.0.0.2"), &trusted), ip("10.0.0.2"));
        // A broken chain stops at the last trusted hop.
        assert_eq!(client_addr(ip("10.0.0.1"), Some("198.51.100.7, junk"), &trusted), ip("10.0.0.1"));
        assert_eq!(client_addr(ip("10.0.0.1"), Some(" 2001:db8::1 "), &trusted), ip("2001:db8::1"));
    }

    #[test]
    fn mapped_addresses_are_their_ipv4_and_ipv6_counts_per_64() {
        let trusted = [ip("127.0.0.1")];
        // A dual-stack listener sees an IPv4 proxy as ::ffff:127.0.0.1.
        assert_eq!(client_addr(ip("::ffff:127.0.0.1"), Some("198.51.100.7"), &trusted), ip("198.51.100.7"));
        assert_eq!(client_addr(ip("127.0.0.1"), Some("::ffff:198.51.100.7"), &trusted), ip("198.51.100.7"));
        assert_eq!(forwarded_for(ip("::ffff:127.0.0.1"), Some("198.51.100.7"), &trusted), "198.51.100.7, 127.0.0.1");
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), limit_key(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(limit_key(ip("2001:db8:1:2::1")), limit_key(ip("2001:db8:1:3::1")));
        assert_eq!(limit_key(ip("::ffff:198.51.100.7")), "198.51.100.7");
    }

    #[test]
    fn trusted_peers_append_and_others_replace() {
        let trusted = [ip("10.0.0.1")];
        assert_eq!(forwarded_for(ip("10.0.0.1"), Some("198.51.100.7"), &trusted), "198.51.100.7, 10.0.0.1");
        assert_eq!(forwarded_for(ip("10.0.0.1"), None, &trusted), "10.0.0.1");
        assert_eq!(forwarded_for(ip("203.0.113.9"), Some("6.6.6.6"), &trusted), "203.0.113.9");
    }
}
