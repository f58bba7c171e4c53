//! The guest's network as Kata's runtime configures it: interfaces, routes
//! and ARP neighbours over NETLINK_ROUTE, in the message shapes of Kata's
//! `types.proto`.
//!
//! Each call opens its own netlink socket and closes it when done: no state
//! outlives a request. The wire format is in `netlink.rs` (why not the
//! rtnetlink crate is said there), conversions and the route order in
//! `convert.rs`.

mod convert;
mod netlink;

use std::net::IpAddr;

use protocols::ttrpc::Code;
use protocols::types::{ARPNeighbor, Interface, Route};

use convert::{add_order, format_mac, ip_address, parse_ip_address, parse_mac, RouteSpec};
use netlink::{attrs, ip_bytes, ip_of, string_of, Message, NlError, Request, RtMsg, Socket};

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network request: {0}")]
    InvalidArgument(String),
    #[error("no interface {0}")]
    NoInterface(String),
    #[error("netlink: cannot {what}")]
    Netlink { what: String, source: NlError },
}

impl NetworkError {
    pub fn code(&self) -> Code {
        match self {
            NetworkError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            NetworkError::NoInterface(_) => Code::NOT_FOUND,
            NetworkError::Netlink { source: NlError::Malformed, .. } => Code::INTERNAL,
            NetworkError::Netlink { source: NlError::Errno(e), .. } => match e {
                nix::Error::EEXIST => Code::ALREADY_EXISTS,
                nix::Error::ENODEV | nix::Error::ESRCH | nix::Error::ENOENT => Code::NOT_FOUND,
                nix::Error::EINVAL | nix::Error::ERANGE | nix::Error::ENETUNREACH => Code::INVALID_ARGUMENT,
                nix::Error::EPERM | nix::Error::EACCES => Code::PERMISSION_DENIED,
                _ => Code::INTERNAL,
            },
        }
    }
}

fn failed(what: impl Into<String>) -> impl FnOnce(NlError) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// One link as a dump shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Link {
    index: u32,
    flags: u32,
    name: String,
    mac: Vec<u8>,
    mtu: u32,
    kind: String,
}

impl Link {
    fn parse(msg: &Message) -> Option<Link> {
        let (index, flags) = netlink::link_header(&msg.body)?;
        let mut link = Link { index, flags, ..Link::default() };
        for (kind, value) in attrs(&msg.body, 16) {
            match kind {
                netlink::IFLA_IFNAME => link.name = string_of(value),
                netlink::IFLA_ADDRESS => link.mac = value.to_vec(),
                netlink::IFLA_MTU => link.mtu = u32::from_ne_bytes(value.try_into().ok()?),
                netlink::IFLA_LINKINFO => {
                    for (k, v) in attrs(value, 0) {
                        if k == netlink::IFLA_INFO_KIND {
                            link.kind = string_of(v);
                        }
                    }
                }
                _ => {}
            }
        }
        Some(link)
    }
}

/// One interface address: (index, address, prefix length).
fn parse_addr(msg: &Message) -> Option<(u32, IpAddr, u8)> {
    let (_, prefix_len, index) = netlink::addr_header(&msg.body)?;
    let mut local = None;
    let mut address = None;
    for (kind, value) in attrs(&msg.body, 8) {
        match kind {
            netlink::IFA_LOCAL => local = ip_of(value),
            netlink::IFA_ADDRESS => address = ip_of(value),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address on point-to-point links.
    Some((index, local.or(address)?, prefix_len))
}

/// One route of the main table, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RouteEntry {
    header: RtMsg,
    dest: Option<IpAddr>,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    oif: Option<u32>,
    table: u32,
    /// The message as the kernel sent it, to delete the route by.
    raw: Vec<u8>,
}

impl RouteEntry {
    fn parse(msg: &Message) -> Option<RouteEntry> {
        let header = RtMsg::parse(&msg.body)?;
        let mut r = RouteEntry { header, table: u32::from(header.table), raw: msg.body.clone(), ..Default::default() };
        for (kind, value) in attrs(&msg.body, RtMsg::LEN) {
            match kind {
                netlink::RTA_DST => r.dest = ip_of(value),
                netlink::RTA_GATEWAY => r.gateway = ip_of(value),
                netlink::RTA_PREFSRC => r.source = ip_of(value),
                netlink::RTA_OIF => r.oif = value.try_into().ok().map(u32::from_ne_bytes),
                netlink::RTA_TABLE => r.table = value.try_into().ok().map(u32::from_ne_bytes).unwrap_or(r.table),
                _ => {}
            }
        }
        Some(r)
    }

    fn is_main_unicast(&self) -> bool {
        self.table == u32::from(netlink::RT_TABLE_MAIN) && self.header.kind == netlink::RTN_UNICAST
    }
}

/// The netlink socket of one request, with the dumps it needs.
struct Netlink {
    sock: Socket,
}

impl Netlink {
    fn open() -> Result<Netlink, NetworkError> {
        Ok(Netlink { sock: Socket::open().map_err(failed("open a NETLINK_ROUTE socket"))? })
    }

    fn links(&mut self) -> Result<Vec<Link>, NetworkError> {
        let msgs = self.sock.dump(netlink::RTM_GETLINK, &netlink::ifinfomsg(0, 0, 0)).map_err(failed("list links"))?;
        Ok(msgs.iter().filter_map(Link::parse).collect())
    }

    fn addresses(&mut self) -> Result<Vec<(u32, IpAddr, u8)>, NetworkError> {
        let msgs =
            self.sock.dump(netlink::RTM_GETADDR, &netlink::ifaddrmsg(0, 0, 0)).map_err(failed("list addresses"))?;
        Ok(msgs.iter().filter_map(parse_addr).collect())
    }

    fn routes(&mut self) -> Result<Vec<RouteEntry>, NetworkError> {
        let msgs = self.sock.dump(netlink::RTM_GETROUTE, &RtMsg::default().bytes()).map_err(failed("list routes"))?;
        Ok(msgs.iter().filter_map(RouteEntry::parse).filter(RouteEntry::is_main_unicast).collect())
    }

    fn index_of(&mut self, name: &str) -> Result<u32, NetworkError> {
        let links = self.links()?;
        links.iter().find(|l| l.name == name).map(|l| l.index).ok_or_else(|| NetworkError::NoInterface(name.to_owned()))
    }

    fn change(&mut self, req: Request, what: impl Into<String>) -> Result<(), NetworkError> {
        self.sock.change(req).map_err(failed(what))
    }

    fn set_link(
        &mut self,
        index: u32,
        up: Option<bool>,
        name: Option<&str>,
        mtu: Option<u32>,
        what: &str,
    ) -> Result<(), NetworkError> {
        let (flags, change) = match up {
            Some(true) => (netlink::IFF_UP, netlink::IFF_UP),
            Some(false) => (0, netlink::IFF_UP),
            None => (0, 0),
        };
        let mut req = Request::new(netlink::RTM_SETLINK, 0, &netlink::ifinfomsg(index, flags, change));
        if let Some(name) = name {
            req = req.attr(netlink::IFLA_IFNAME, format!("{name}\0").as_bytes());
        }
        if let Some(mtu) = mtu {
            req = req.attr(netlink::IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.change(req, what)
    }

    fn interface(&mut self, link: &Link) -> Result<Interface, NetworkError> {
        let mut i = Interface::new();
        i.device = link.name.clone();
        i.name = link.name.clone();
        i.raw_flags = link.flags;
        i.mtu = u64::from(link.mtu);
        i.hwAddr = format_mac(&link.mac);
        i.type_ = link.kind.clone();
        for (index, ip, len) in self.addresses()? {
            if index == link.index {
                i.IPAddresses.push(ip_address(ip, len));
            }
        }
        Ok(i)
    }
}

/// How long UpdateInterface waits for a hot-plugged NIC to show up.
pub const LINK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Every interface with its addresses.
pub fn list_interfaces() -> Result<Vec<Interface>, NetworkError> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    links.iter().map(|l| nl.interface(l)).collect()
}

/// Configures the interface with `iface.hwAddr` (or, without one, named
/// `iface.name`): name, MTU, addresses (replacing the old ones), then up
/// unless `raw_flags` is given without IFF_UP. Returns it as it now is.
///
/// A NIC named by its hardware address may have just been hot-plugged (a VM cloned from a
/// template gets its pod's NIC after the restore): its link is waited for, up to [`LINK_WAIT`].
pub fn update_interface(iface: &Interface) -> Result<Interface, NetworkError> {
    let mut nl = Netlink::open()?;
    let mut links = nl.links()?;
    let link = if !iface.hwAddr.is_empty() {
        let mac = parse_mac(&iface.hwAddr)?;
        let deadline = std::time::Instant::now() + LINK_WAIT;
        while !links.iter().any(|l| l.mac == mac) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            links = nl.links()?;
        }
        links
            .iter()
            .find(|l| l.mac == mac)
            .ok_or_else(|| NetworkError::NoInterface(format!("with hardware address {}", iface.hwAddr)))?
    } else if !iface.name.is_empty() {
        links.iter().find(|l| l.name == iface.name).ok_or_else(|| NetworkError::NoInterface(iface.name.clone()))?
    } else {
        return Err(NetworkError::InvalidArgument("interface has neither hwAddr nor name".into()));
    };
    let addresses = iface.IPAddresses.iter().map(parse_ip_address).collect::<Result<Vec<_>, _>>()?;
    let mtu = match iface.mtu {
        0 => None,
        m => Some(u32::try_from(m).map_err(|_| NetworkError::InvalidArgument(format!("mtu {m}")))?),
    };
    let (index, current) = (link.index, link.name.clone());
    let rename = (!iface.name.is_empty() && iface.name != current).then_some(iface.name.as_str());

    // A link is renamed only while down.
    nl.set_link(index, Some(false), None, None, &format!("set {current} down"))?;
    if rename.is_some() || mtu.is_some() {
        nl.set_link(index, None, rename, mtu, &format!("set the name and mtu of {current}"))?;
    }
    for (i, ip, len) in nl.addresses()? {
        // IPv6 link-local addresses belong to the kernel, which re-adds them on up.
        if i != index || matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
            continue;
        }
        let req = Request::new(netlink::RTM_DELADDR, 0, &netlink::ifaddrmsg(family(ip), len, index))
            .attr(netlink::IFA_LOCAL, &ip_bytes(ip));
        nl.change(req, format!("delete {ip}/{len} from {current}"))?;
    }
    for (ip, len) in addresses {
        let flags = netlink::NLM_F_CREATE | netlink::NLM_F_REPLACE;
        let req = Request::new(netlink::RTM_NEWADDR, flags, &netlink::ifaddrmsg(family(ip), len, index))
            .attr(netlink::IFA_LOCAL, &ip_bytes(ip))
            .attr(netlink::IFA_ADDRESS, &ip_bytes(ip));
        nl.change(req, format!("add {ip}/{len} to {current}"))?;
    }
    if iface.raw_flags == 0 || iface.raw_flags & netlink::IFF_UP != 0 {
        nl.set_link(index, Some(true), None, None, &format!("set {current} up"))?;
    }
    let links = nl.links()?;
    let link = links.iter().find(|l| l.index == index).ok_or(NetworkError::NoInterface(current))?;
    nl.interface(link)
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv6() {
        AF_INET6
    } else {
        AF_INET
    }
}

/// The main table's unicast routes (broadcast and local routes are the
/// kernel's bookkeeping). The default route has an empty `dest`.
pub fn list_routes() -> Result<Vec<Route>, NetworkError> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let routes = nl.routes()?;
    Ok(routes.iter().map(|r| to_route(r, &links)).collect())
}

fn to_route(e: &RouteEntry, links: &[Link]) -> Route {
    let mut r = Route::new();
    r.family = convert::family(e.header.family == AF_INET6).into();
    r.scope = e.header.scope.into();
    r.flags = e.header.flags;
    if let Some(dest) = e.dest {
        r.dest = format!("{dest}/{}", e.header.dst_len);
    }
    r.gateway = e.gateway.map(|ip| ip.to_string()).unwrap_or_default();
    r.source = e.source.map(|ip| ip.to_string()).unwrap_or_default();
    r.device = e.oif.and_then(|i| links.iter().find(|l| l.index == i)).map(|l| l.name.clone()).unwrap_or_default();
    r
}

/// Replaces the main table: deletes every route the kernel did not make
/// itself (those follow the interfaces' addresses), then adds `routes`,
/// link routes before the gateway routes that go through them.
pub fn update_routes(routes: &[Route]) -> Result<Vec<Route>, NetworkError> {
    let mut specs = routes.iter().map(RouteSpec::parse).collect::<Result<Vec<_>, _>>()?;
    add_order(&mut specs);
    let mut nl = Netlink::open()?;
    for old in nl.routes()? {
        if old.header.protocol == netlink::RTPROT_KERNEL {
            continue;
        }
        let mut req = Request::new(netlink::RTM_DELROUTE, 0, &old.raw[..RtMsg::LEN]);
        for (kind, value) in attrs(&old.raw, RtMsg::LEN) {
            req = req.attr(kind, value);
        }
        let what = format!("delete the route to {:?} via {:?}", old.dest, old.gateway);
        nl.change(req, what)?;
    }
    let links = nl.links()?;
    for spec in &specs {
        let req = route_request(spec, &links)?;
        let what = format!("add the route to {:?} via {:?} dev {:?}", spec.dest, spec.gateway, spec.device);
        nl.change(req, what)?;
    }
    let routes = nl.routes()?;
    Ok(routes.iter().map(|r| to_route(r, &links)).collect())
}

fn route_request(spec: &RouteSpec, links: &[Link]) -> Result<Request, NetworkError> {
    let (dest, len) = spec.dest.unwrap_or((convert::unspecified(spec.v6), 0));
    let header = RtMsg {
        family: if spec.v6 { AF_INET6 } else { AF_INET },
        dst_len: len,
        table: netlink::RT_TABLE_MAIN,
        protocol: netlink::RTPROT_BOOT,
        // Kata sends 0 (universe) for every route; a route with no gateway
        // still reaches only its link.
        scope: match (spec.scope, spec.gateway) {
            (netlink::RT_SCOPE_UNIVERSE, None) => netlink::RT_SCOPE_LINK,
            (s, _) => s,
        },
        kind: netlink::RTN_UNICAST,
        flags: 0,
    };
    let mut req = Request::new(netlink::RTM_NEWROUTE, netlink::NLM_F_CREATE | netlink::NLM_F_EXCL, &header.bytes());
    if len > 0 {
        req = req.attr(netlink::RTA_DST, &ip_bytes(dest));
    }
    if let Some(gw) = spec.gateway {
        req = req.attr(netlink::RTA_GATEWAY, &ip_bytes(gw));
    }
    if let Some(src) = spec.source {
        req = req.attr(netlink::RTA_PREFSRC, &ip_bytes(src));
    }
    if !spec.device.is_empty() {
        let link = links
            .iter()
            .find(|l| l.name == spec.device)
            .ok_or_else(|| NetworkError::NoInterface(spec.device.clone()))?;
        req = req.attr(netlink::RTA_OIF, &link.index.to_ne_bytes());
    }
    Ok(req)
}

/// Adds (or replaces) static ARP/NDP entries; state 0 means permanent.
pub fn add_arp_neighbors(neighbors: &[ARPNeighbor]) -> Result<(), NetworkError> {
    let mut nl = Netlink::open()?;
    for n in neighbors {
        let to = n.toIPAddress.as_ref().map(|a| a.address.as_str()).unwrap_or_default();
        let ip: IpAddr =
            to.parse().map_err(|_| NetworkError::InvalidArgument(format!("neighbour {to:?} is not an IP address")))?;
        let index = nl.index_of(&n.device)?;
        let state = u16::try_from(n.state).ok().filter(|s| *s != 0).unwrap_or(netlink::NUD_PERMANENT);
        let flags =
            u8::try_from(n.flags).map_err(|_| NetworkError::InvalidArgument(format!("neighbour flags {}", n.flags)))?;
        let mut req = Request::new(
            netlink::RTM_NEWNEIGH,
            netlink::NLM_F_CREATE | netlink::NLM_F_REPLACE,
            &netlink::ndmsg(family(ip), index, state, flags),
        )
        .attr(netlink::NDA_DST, &ip_bytes(ip));
        if !n.lladdr.is_empty() {
            req = req.attr(netlink::NDA_LLADDR, &parse_mac(&n.lladdr)?);
        }
        nl.change(req, format!("add neighbour {ip} on {}", n.device))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<Link> {
        vec![
            Link { index: 1, name: "lo".into(), ..Link::default() },
            Link { index: 2, name: "eth0".into(), ..Link::default() },
        ]
    }

    #[test]
    fn a_gateway_route_request_carries_everything_the_kernel_needs() {
        let mut r = Route::new();
        r.gateway = "10.0.2.2".into();
        r.device = "eth0".into();
        let req = route_request(&RouteSpec::parse(&r).expect("valid"), &links()).expect("request");
        let m = Message { kind: netlink::RTM_NEWROUTE, body: req_body(req) };
        let e = RouteEntry::parse(&m).expect("parses back");
        assert_eq!(
            (e.header.dst_len, e.header.scope, e.header.table),
            (0, netlink::RT_SCOPE_UNIVERSE, netlink::RT_TABLE_MAIN)
        );
        assert_eq!((e.dest, e.gateway, e.oif), (None, Some("10.0.2.2".parse().expect("ip")), Some(2)));
        let back = to_route(&e, &links());
        assert_eq!((back.dest.as_str(), back.gateway.as_str(), back.device.as_str()), ("", "10.0.2.2", "eth0"));
    }

    #[test]
    fn a_link_route_gets_link_scope_and_an_unknown_device_is_named() {
        let mut r = Route::new();
        r.dest = "10.0.3.0/24".into();
        r.device = "eth0".into();
        let req = route_request(&RouteSpec::parse(&r).expect("valid"), &links()).expect("request");
        let e = RouteEntry::parse(&Message { kind: 0, body: req_body(req) }).expect("parses back");
        assert_eq!(
            (e.header.scope, e.header.dst_len, e.dest),
            (netlink::RT_SCOPE_LINK, 24, Some("10.0.3.0".parse().expect("ip")))
        );
        assert_eq!(to_route(&e, &links()).dest, "10.0.3.0/24");
        r.device = "eth9".into();
        let err = route_request(&RouteSpec::parse(&r).expect("valid"), &links()).expect_err("no eth9");
        assert_eq!(err.code(), Code::NOT_FOUND);
        assert!(err.to_string().contains("eth9"), "{err}");
    }

    #[test]
    fn netlink_errors_keep_their_errno_code() {
        let e = failed("add a route")(NlError::Errno(nix::Error::EEXIST));
        assert_eq!(e.code(), Code::ALREADY_EXISTS);
        assert_eq!(failed("x")(NlError::Errno(nix::Error::ENODEV)).code(), Code::NOT_FOUND);
        assert_eq!(failed("x")(NlError::Malformed).code(), Code::INTERNAL);
    }

    /// The body (after the 16-byte nlmsghdr) of a request, as the kernel reads it.
    fn req_body(req: Request) -> Vec<u8> {
        req.into_bytes()[16..].to_vec()
    }
}
