//! Kata's network messages (`types.proto`) to and from netlink's, and the
//! order routes must be added in. Pure functions, tested without netlink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use protocols::types::{IPAddress, IPFamily, Route};

use super::NetworkError;

/// A route from UpdateRoutes, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// None: the default route.
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub source: Option<IpAddr>,
    pub scope: u8,
    pub v6: bool,
}

impl RouteSpec {
    pub fn parse(r: &Route) -> Result<RouteSpec, NetworkError> {
        let bad = |why: String| NetworkError::InvalidArgument(format!("route {:?} via {:?}: {why}", r.dest, r.gateway));
        let dest = match r.dest.as_str() {
            "" | "default" => None,
            d => Some(parse_prefix(d).map_err(bad)?),
        };
        let gateway = ip_or_none(&r.gateway).map_err(|e| bad(format!("gateway: {e}")))?;
        let source = ip_or_none(&r.source).map_err(|e| bad(format!("source: {e}")))?;
        let v6 = match (dest, gateway) {
            (Some((ip, _)), _) | (None, Some(ip)) => ip.is_ipv6(),
            (None, None) => r.family.enum_value() == Ok(IPFamily::v6),
        };
        for ip in [gateway, source].into_iter().flatten().chain(dest.map(|d| d.0)) {
            if ip.is_ipv6() != v6 {
                return Err(bad("mixes IPv4 and IPv6 addresses".into()));
            }
        }
        if r.device.is_empty() && gateway.is_none() {
            return Err(bad("neither a device nor a gateway".into()));
        }
        let scope = u8::try_from(r.scope).map_err(|_| bad(format!("scope {} is not 0..255", r.scope)))?;
        Ok(RouteSpec { dest, gateway, device: r.device.clone(), source, scope, v6 })
    }
}

/// Routes without a gateway (reaching a link directly) first: a gateway is
/// only accepted once a route to it exists. Stable otherwise.
pub fn add_order(routes: &mut [RouteSpec]) {
    routes.sort_by_key(|r| r.gateway.is_some());
}

/// `10.0.2.0/24`, `fd00::/64`, or a bare address (a host route).
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an IP address or prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| format!("bad prefix length in {s:?}"))?,
        None => max,
    };
    Ok((ip, len))
}

fn ip_or_none(s: &str) -> Result<Option<IpAddr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| format!("{s:?} is not an IP address"))
}

/// An interface address: Kata sends the prefix length as `mask` ("24"); a
/// dotted IPv4 mask ("255.255.255.0") is accepted too.
pub fn parse_ip_address(a: &IPAddress) -> Result<(IpAddr, u8), NetworkError> {
    let bad = |why: &str| NetworkError::InvalidArgument(format!("address {:?}/{:?}: {why}", a.address, a.mask));
    let ip: IpAddr = a.address.parse().map_err(|_| bad("not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match a.mask.parse::<u8>() {
        Ok(len) if len <= max => len,
        Ok(_) => return Err(bad("prefix length too long")),
        Err(_) if a.mask.is_empty() => max,
        Err(_) => {
            let mask: Ipv4Addr = a.mask.parse().map_err(|_| bad("mask is neither a length nor a dotted mask"))?;
            let bits = u32::from(mask);
            if !ip.is_ipv4() || bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(bad("mask is not contiguous"));
            }
            bits.leading_ones() as u8
        }
    };
    Ok((ip, len))
}

pub fn ip_address(ip: IpAddr, prefix_len: u8) -> IPAddress {
    let mut a = IPAddress::new();
    a.family = family(ip.is_ipv6()).into();
    a.address = ip.to_string();
    a.mask = prefix_len.to_string();
    a
}

pub fn family(v6: bool) -> IPFamily {
    if v6 {
        IPFamily::v6
    } else {
        IPFamily::v4
    }
}

/// `52:54:00:12:34:56` -> bytes; any length, for non-Ethernet links.
pub fn parse_mac(s: &str) -> Result<Vec<u8>, NetworkError> {
    let bytes: Option<Vec<u8>> =
        s.split(':').map(|b| if b.len() == 2 { u8::from_str_radix(b, 16).ok() } else { None }).collect();
    bytes
        .filter(|b| !b.is_empty())
        .ok_or_else(|| NetworkError::InvalidArgument(format!("{s:?} is not a hardware address like 52:54:00:12:34:56")))
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The unspecified address of a family, for a default route's destination.
pub fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dest: &str, gateway: &str, device: &str) -> Route {
        let mut r = Route::new();
        r.dest = dest.into();
        r.gateway = gateway.into();
        r.device = device.into();
        r
    }

    #[test]
    fn link_routes_go_before_gateway_routes() {
        let mut routes: Vec<_> = [
            route("", "10.0.2.2", "eth0"),
            route("10.0.2.0/24", "", "eth0"),
            route("192.168.0.0/16", "10.0.2.3", "eth0"),
            route("10.0.3.1", "", "eth0"),
        ]
        .iter()
        .map(|r| RouteSpec::parse(r).expect("valid"))
        .collect();
        add_order(&mut routes);
        let order: Vec<_> = routes.iter().map(|r| (r.dest, r.gateway)).collect();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            order,
            vec![
                (Some((ip("10.0.2.0"), 24)), None),
                (Some((ip("10.0.3.1"), 32)), None),
                (None, Some(ip("10.0.2.2"))),
                (Some((ip("192.168.0.0"), 16)), Some(ip("10.0.2.3"))),
            ]
        );
    }

    #[test]
    fn route_parsing_checks_families_and_fields() {
        let r = RouteSpec::parse(&route("default", "fd00::1", "eth0")).expect("v6 default");
        assert!(r.v6 && r.dest.is_none());
        assert!(RouteSpec::parse(&route("10.0.0.0/8", "fd00::1", "eth0")).is_err(), "mixed families");
        assert!(RouteSpec::parse(&route("10.0.0.0/33", "", "eth0")).is_err(), "prefix too long");
        assert!(RouteSpec::parse(&route("10.0.0.0/8", "", "")).is_err(), "nowhere to send");
        assert!(RouteSpec::parse(&route("ten/8", "", "eth0")).is_err(), "not an address");
        let mut scoped = route("10.0.0.0/8", "", "eth0");
        scoped.scope = 300;
        assert!(RouteSpec::parse(&scoped).is_err(), "scope out of range");
    }

    #[test]
    fn addresses_accept_lengths_and_dotted_masks() {
        let a = |address: &str, mask: &str| {
            let mut a = IPAddress::new();
            a.address = address.into();
            a.mask = mask.into();
            parse_ip_address(&a)
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(a("10.0.2.15", "24").expect("len"), (ip("10.0.2.15"), 24));
        assert_eq!(a("10.0.2.15", "255.255.255.0").expect("dotted"), (ip("10.0.2.15"), 24));
        assert_eq!(a("fd00::5", "64").expect("v6"), (ip("fd00::5"), 64));
        assert_eq!(a("10.0.2.15", "").expect("host"), (ip("10.0.2.15"), 32));
        assert!(a("10.0.2.15", "255.0.255.0").is_err());
        assert!(a("10.0.2.15", "40").is_err());
        assert!(a("fd00::5", "255.255.255.0").is_err());
        assert!(a("x", "24").is_err());
        let back = ip_address(ip("fd00::5"), 64);
        assert_eq!(
            (back.address.as_str(), back.mask.as_str(), back.family.enum_value()),
            ("fd00::5", "64", Ok(IPFamily::v6))
        );
    }

    #[test]
    fn mac_round_trip() {
        assert_eq!(parse_mac("52:54:00:AB:cd:0f").expect("mac"), vec![0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0x0f]), "52:54:00:ab:cd:0f");
        for bad in ["", "5254.0012", "52:54:00:12:34:5", "zz:00"] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
    }
}
