//! Who is on the other end of a TCP connection: the networks a peer may connect from
//! (`allow`), the shared token of `#auth` lines, and the owner a numbered session belongs to.
//!
//! CIDR parsing is a few lines here rather than a crate (`ipnet`): all the source needs is
//! "does this address fall in one of these prefixes", checked once per accepted connection.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use eddy_common::Secret;

/// A network peers may connect from: an address and a prefix length (`192.168.10.0/24`,
/// `::1/128`). An IPv4 peer that reaches a dual-stack listener as `::ffff:a.b.c.d` is matched
/// as the IPv4 address it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl PeerNet {
    /// Parses `ADDRESS/PREFIX` (a bare address is a single host). Host bits must be zero, so
    /// that a typo like `192.168.10.7/24` is an error, not a surprise.
    pub fn parse(text: &str) -> Result<PeerNet, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a network like 192.168.10.0/24"))?;
        let max_len: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_text {
            None => max_len,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max_len)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max_len}"))?,
        };
        let net = PeerNet { addr, prefix_len };
        if net.masked(addr) != bits(addr) {
            return Err(format!("`{text}` has host bits set; did you mean {}?", net.network()));
        }
        Ok(net)
    }

    /// Whether `peer` is in this network.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        peer.is_ipv4() == self.addr.is_ipv4() && self.masked(peer) == bits(self.addr)
    }

    /// `bits(addr)` with the host bits cleared (as a 128-bit number, v4 in the low 32 bits).
    fn masked(&self, addr: IpAddr) -> u128 {
        let width: u32 = if addr.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix_len);
        let mask = if host_bits >= 128 { 0 } else { u128::MAX << host_bits };
        bits(addr) & mask
    }

    /// The network with its host bits cleared, for the error message.
    fn network(&self) -> PeerNet {
        let masked = self.masked(self.addr);
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::from(u32::try_from(masked).unwrap_or(0).to_be_bytes()),
            IpAddr::V6(_) => IpAddr::from(masked.to_be_bytes()),
        };
        PeerNet { addr, prefix_len: self.prefix_len }
    }
}

impl fmt::Display for PeerNet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.addr, self.prefix_len)
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Whether `peer` may connect: always with an empty allow-list.
pub(crate) fn is_allowed(allow: &[PeerNet], peer: IpAddr) -> bool {
    allow.is_empty() || allow.iter().any(|net| net.contains(peer))
}

/// Who a numbered session belongs to: the strongest credential the connection showed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    /// A verified client certificate, by its subject (DER): a renewed certificate for the
    /// same subject keeps its sessions.
    Certificate(Arc<[u8]>),
    /// The shared token (every peer that knows it is the same owner).
    Token,
    /// No credential: the peer's IP address.
    Peer(IpAddr),
}

impl fmt::Debug for Owner {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Certificate(_) => formatter.write_str("client certificate"),
            Owner::Token => formatter.write_str("token"),
            Owner::Peer(ip) => write!(formatter, "peer {ip}"),
        }
    }
}

/// The control line that authenticates a connection: `#auth TOKEN`.
pub(crate) const AUTH_PREFIX: &[u8] = b"#auth ";

/// Whether `line` is `#auth TOKEN` with the right token. The comparison takes the same time
/// whatever the bytes are (it depends on the lengths only), so the token cannot be guessed
/// byte by byte from the time an answer takes.
///
/// Public for the fuzz targets (`fuzz/`); a TCP source with a token calls it on a
/// connection's first line.
pub fn auth_line_matches(line: &[u8], token: &Secret) -> bool {
    let Some(given) = line.strip_prefix(AUTH_PREFIX) else { return false };
    constant_time_eq(given.trim_ascii(), token.expose().as_bytes())
}

fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for idx in 0..given.len().max(expected.len()) {
        let left = given.get(idx).copied().unwrap_or(0);
        let right = expected.get(idx).copied().unwrap_or(0);
        difference |= left ^ right;
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(net: &str, peer: &str, expected: bool) {
        let net = PeerNet::parse(net).unwrap();
        assert_eq!(net.contains(peer.parse().unwrap()), expected, "{net} contains {peer}");
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        check("192.168.10.0/24", "192.168.10.77", true);
        check("192.168.10.0/24", "192.168.11.1", false);
        check("10.1.2.3/32", "10.1.2.3", true);
        check("10.1.2.3", "10.1.2.4", false);
        check("0.0.0.0/0", "8.8.8.8", true);
        check("0.0.0.0/0", "::1", false);
        check("::1/128", "::1", true);
        check("::/0", "2001:db8::1", true);
        check("fd00::/8", "fd12:3456::1", true);
        check("fd00::/8", "fe80::1", false);
        // An IPv4 peer on a dual-stack socket.
        check("127.0.0.0/8", "::ffff:127.0.0.2", true);
    }

    #[test]
    fn bad_networks_say_why() {
        assert!(PeerNet::parse("192.168.10.0/33").unwrap_err().contains("0 to 32"));
        assert!(PeerNet::parse("::1/129").unwrap_err().contains("0 to 128"));
        assert!(PeerNet::parse("192.168.10.7/24").unwrap_err().contains("192.168.10.0/24"));
        assert!(PeerNet::parse("gateway/24").unwrap_err().contains("not a network"));
        assert!(PeerNet::parse("10.0.0.0/x").is_err());
    }

    #[test]
    fn only_the_exact_token_authenticates() {
        let token = Secret::new("s3cret-token");
        assert!(auth_line_matches(b"#auth s3cret-token", &token));
        assert!(auth_line_matches(b"#auth s3cret-token \r", &token));
        assert!(!auth_line_matches(b"#auth s3cret-toke", &token));
        assert!(!auth_line_matches(b"#auth s3cret-token2", &token));
        assert!(!auth_line_matches(b"#auth ", &token));
        assert!(!auth_line_matches(b"s3cret-token", &token));
        assert!(!auth_line_matches(b"#auths3cret-token", &token));
    }
}
