//! Who is on the other end: the client address behind trusted reverse
//! proxies (`TRUSTED_PROXIES`), computed in one place.
//!
//! The TCP peer is the only address nobody can forge. A forwarding header
//! (`X-Forwarded-For`, or RFC 7239 `Forwarded`, whichever
//! `TRUSTED_PROXY_HEADER` names) is believed only when that peer is a
//! trusted proxy, and then only up to the first hop that is not trusted:
//! everything left of it was written by the client and may be a lie. A
//! header that cannot be read (garbage, `unknown`, an obfuscated id) means
//! the peer address, never an error: a broken proxy must not lock clients
//! out, and a client must not be able to pick a fresh address by sending
//! garbage.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;

/// Hops read from the right of a forwarding header at most: a real chain of
/// proxies is a handful long, and the walk must not cost more than that
/// whatever a client sends.
const MAX_HOPS: usize = 32;

/// Which forwarding header the trusted proxies write.
///
/// One, not both: a proxy passes the header it does not write straight
/// from the client, so believing it would let any client choose its
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx's
    /// `$proxy_add_x_forwarded_for`, most load balancers).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// The proxies whose forwarding headers are believed (`TRUSTED_PROXIES`).
/// Empty trusts nobody: the client is the TCP peer.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>, header: ForwardedHeader) -> Self {
        TrustedProxies { nets, header }
    }

    /// Trusts nobody.
    pub fn none() -> Self {
        Self::new(Vec::new(), ForwardedHeader::XForwardedFor)
    }

    /// Parses a comma-separated list of CIDRs; a bare address is a /32 or
    /// /128.
    ///
    /// # Errors
    /// Names (by position, not value) the first entry that is neither a
    /// CIDR nor an address.
    pub fn parse_list(list: &str) -> Result<Vec<IpNet>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    // The host bits of `10.0.0.7/8` are meaningless: keep the network.
                    .map(|n| n.trunc())
                    .map_err(|_| format!("entry {} is not a CIDR (10.0.0.0/8, fd00::/8) or an IP address", i + 1))
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn header(&self) -> ForwardedHeader {
        self.header
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => forwarded_chain(headers, "x-forwarded-for", parse_xff_hop),
            ForwardedHeader::Forwarded => forwarded_chain(headers, "forwarded", parse_forwarded_element),
        };
        hops.and_then(|hops| self.walk(hops)).unwrap_or(peer)
    }

    /// Walks hops right to left, skipping trusted ones: the first untrusted
    /// hop is the client; when every hop is trusted, the leftmost.
    /// `None` (use the peer) when a hop on the way cannot be read or the
    /// chain is longer than [`MAX_HOPS`].
    fn walk(&self, hops: impl DoubleEndedIterator<Item = Option<IpAddr>>) -> Option<IpAddr> {
        let mut leftmost = None;
        for (i, hop) in hops.rev().take(MAX_HOPS + 1).enumerate() {
            if i == MAX_HOPS {
                return None;
            }
            let ip = hop?.to_canonical();
            if !self.contains(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    }
}

/// Every comma-separated element of every occurrence of `name`, in order,
/// each parsed by `parse` (`None` for an unreadable one); `None` when the
/// header is absent or not visible ASCII.
fn forwarded_chain<'h>(
    headers: &'h HeaderMap,
    name: &str,
    parse: fn(&str) -> Option<IpAddr>,
) -> Option<impl DoubleEndedIterator<Item = Option<IpAddr>> + 'h> {
    let values: Vec<&str> = headers.get_all(name).iter().map(|v| v.to_str().ok()).collect::<Option<_>>()?;
    if values.is_empty() {
        return None;
    }
    Some(values.into_iter().flat_map(split_elements).map(move |e| parse(e.trim())))
}

/// Splits on commas outside double quotes (a quoted `Forwarded` value may
/// hold one).
fn split_elements(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out
}

/// One `X-Forwarded-For` hop: an address, possibly with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:80`) or brackets.
fn parse_xff_hop(s: &str) -> Option<IpAddr> {
    parse_node(s)
}

/// An address with an optional port, IPv6 optionally in brackets.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The `for=` node of one RFC 7239 element (`for=192.0.2.60;proto=http`,
/// `for="[2001:db8:cafe::17]:4711"`). `unknown`, obfuscated identifiers
/// (`_hidden`) and a missing `for` are unreadable.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in element.split(';') {
        let (k, v) = pair.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("for") {
            if found.is_some() {
                return None; // two `for`s in one element: malformed
            }
            let v = v.trim();
            let v = match v.strip_prefix('"') {
                Some(rest) => rest.strip_suffix('"')?,
                None => v,
            };
            found = Some(parse_node(v)?);
        }
    }
    found
}

/// The address of the client that sent a request: the TCP peer, or what a
/// trusted proxy says it forwarded for (see the module doc). Per-IP limits,
/// the audit log and log lines all use this, never the raw peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// From a request's extensions (its `ConnectInfo`) and headers.
    pub fn of(extensions: &Extensions, headers: &HeaderMap, trusted: &TrustedProxies) -> Self {
        // The server always runs with connect info (startup.rs); without it
        // (a router driven in-process) the unspecified address stands in.
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        ClientAddr(trusted.client_addr(peer, headers))
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Any state that can lend the trusted proxies extracts a `ClientAddr`
/// (the application's state does). Generic so that this module, on the
/// ground floor, knows nothing of the state that holds it; `AsRef` rather
/// than `FromRef` so no request clones the list.
impl<S: AsRef<TrustedProxies> + Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr::of(&parts.extensions, &parts.headers, state.as_ref()))
    }
}
