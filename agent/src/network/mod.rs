//! The guest's network as Kata's runtime configures it: interfaces, routes
//! and ARP neighbours over rtnetlink, in the message shapes of Kata's
//! `types.proto`.
//!
//! Each call opens its own netlink connection and drops it when done: no
//! state outlives a request, and a request never waits behind another's
//! socket. Conversions and the route order live in `convert.rs`.

mod convert;

use std::net::IpAddr;

use futures_util::TryStreamExt;
use protocols::ttrpc::Code;
use protocols::types::{ARPNeighbor, Interface, Route};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec};

use convert::{add_order, format_mac, ip_address, parse_ip_address, parse_mac, RouteSpec};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network request: {0}")]
    InvalidArgument(String),
    #[error("no interface {0}")]
    NoInterface(String),
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink: cannot {what}")]
    Netlink { what: String, source: rtnetlink::Error },
}

impl NetworkError {
    pub fn code(&self) -> Code {
        match self {
            NetworkError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            NetworkError::NoInterface(_) => Code::NOT_FOUND,
            NetworkError::Socket(_) => Code::INTERNAL,
            NetworkError::Netlink { source, .. } => match errno(source) {
                Some(libc::EEXIST) => Code::ALREADY_EXISTS,
                Some(libc::ENODEV) | Some(libc::ESRCH) | Some(libc::ENOENT) => Code::NOT_FOUND,
                Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::ENETUNREACH) => Code::INVALID_ARGUMENT,
                Some(libc::EPERM) | Some(libc::EACCES) => Code::PERMISSION_DENIED,
                _ => Code::INTERNAL,
            },
        }
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// A netlink connection for one request; its driver task ends on drop.
struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    fn open() -> Result<Netlink, NetworkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
        Ok(Netlink { handle, task: tokio::spawn(conn) })
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, NetworkError> {
        self.handle.link().get().execute().try_collect().await.map_err(failed("list links"))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<AddressMessage>, NetworkError> {
        let all: Vec<AddressMessage> =
            self.handle.address().get().execute().try_collect().await.map_err(failed("list addresses"))?;
        Ok(all.into_iter().filter(|a| a.header.index == index).collect())
    }

    async fn routes(&self) -> Result<Vec<RouteMessage>, NetworkError> {
        let mut all = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let got: Vec<RouteMessage> =
                self.handle.route().get(query).execute().try_collect().await.map_err(failed("list routes"))?;
            all.extend(got.into_iter().filter(|r| table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)));
        }
        Ok(all)
    }

    async fn index_of(&self, name: &str) -> Result<u32, NetworkError> {
        let links = self.links().await?;
        links
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(|l| l.header.index)
            .ok_or_else(|| NetworkError::NoInterface(name.to_owned()))
    }

    async fn interface(&self, link: &LinkMessage) -> Result<Interface, NetworkError> {
        let mut i = Interface::new();
        let name = link_name(link).unwrap_or_default().to_owned();
        i.device = name.clone();
        i.name = name;
        i.raw_flags = link.header.flags.bits();
        for attr in &link.attributes {
            match attr {
                LinkAttribute::Mtu(mtu) => i.mtu = u64::from(*mtu),
                LinkAttribute::Address(mac) => i.hwAddr = format_mac(mac),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            i.type_ = kind.to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        for addr in self.addresses(link.header.index).await? {
            if let Some(ip) = address_ip(&addr) {
                i.IPAddresses.push(ip_address(ip, addr.header.prefix_len));
            }
        }
        Ok(i)
    }
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

/// The interface's own address: IFA_LOCAL on point-to-point links, else IFA_ADDRESS.
fn address_ip(addr: &AddressMessage) -> Option<IpAddr> {
    let local = addr.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        addr.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// Every interface with its addresses.
pub async fn list_interfaces() -> Result<Vec<Interface>, NetworkError> {
    let nl = Netlink::open()?;
    let mut out = Vec::new();
    for link in nl.links().await? {
        out.push(nl.interface(&link).await?);
    }
    Ok(out)
}

/// Configures the interface with `iface.hwAddr` (or, without one, named
/// `iface.name`): name, MTU, addresses (replacing the old ones), then up
/// unless `raw_flags` is given without IFF_UP. Returns it as it now is.
pub async fn update_interface(iface: &Interface) -> Result<Interface, NetworkError> {
    let nl = Netlink::open()?;
    let links = nl.links().await?;
    let link = if !iface.hwAddr.is_empty() {
        let mac = parse_mac(&iface.hwAddr)?;
        links
            .iter()
            .find(|l| link_mac(l) == Some(mac.as_slice()))
            .ok_or_else(|| NetworkError::NoInterface(format!("with hardware address {}", iface.hwAddr)))?
    } else if !iface.name.is_empty() {
        links
            .iter()
            .find(|l| link_name(l) == Some(iface.name.as_str()))
            .ok_or_else(|| NetworkError::NoInterface(iface.name.clone()))?
    } else {
        return Err(NetworkError::InvalidArgument("interface has neither hwAddr nor name".into()));
    };
    let addresses = iface.IPAddresses.iter().map(parse_ip_address).collect::<Result<Vec<_>, _>>()?;
    let index = link.header.index;
    let current = link_name(link).unwrap_or_default().to_owned();
    let what = |w: &str| format!("{w} of {current}");

    // A link is renamed only while down.
    nl.handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(failed(what("set down")))?;
    let mut change = LinkUnspec::new_with_index(index);
    if !iface.name.is_empty() && iface.name != current {
        change = change.name(iface.name.clone());
    }
    if iface.mtu > 0 {
        let mtu = u32::try_from(iface.mtu).map_err(|_| NetworkError::InvalidArgument(format!("mtu {}", iface.mtu)))?;
        change = change.mtu(mtu);
    }
    nl.handle.link().set(change.build()).execute().await.map_err(failed(what("set name and mtu")))?;

    for old in nl.addresses(index).await? {
        // IPv6 link-local addresses belong to the kernel, which re-adds them on up.
        if matches!(address_ip(&old), Some(IpAddr::V6(ip)) if ip.segments()[0] & 0xffc0 == 0xfe80) {
            continue;
        }
        nl.handle.address().del(old).execute().await.map_err(failed(what("delete an old address")))?;
    }
    for (ip, len) in addresses {
        nl.handle
            .address()
            .add(index, ip, len)
            .replace()
            .execute()
            .await
            .map_err(failed(format!("add {ip}/{len} to {current}")))?;
    }
    let up = iface.raw_flags == 0 || iface.raw_flags & libc::IFF_UP as u32 != 0;
    if up {
        nl.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed(what("set up")))?;
    }
    let links = nl.links().await?;
    let link = links.iter().find(|l| l.header.index == index).ok_or(NetworkError::NoInterface(current))?;
    nl.interface(link).await
}

/// The main table's routes (unicast ones: broadcast and local routes are the
/// kernel's bookkeeping).
pub async fn list_routes() -> Result<Vec<Route>, NetworkError> {
    let nl = Netlink::open()?;
    let names: Vec<(u32, String)> =
        nl.links().await?.iter().map(|l| (l.header.index, link_name(l).unwrap_or_default().to_owned())).collect();
    let mut out = Vec::new();
    for msg in nl.routes().await? {
        if msg.header.kind != RouteType::Unicast {
            continue;
        }
        let mut r = Route::new();
        r.family = convert::family(msg.header.address_family == AddressFamily::Inet6).into();
        r.scope = u8::from(msg.header.scope).into();
        r.flags = msg.header.flags.bits();
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => {
                    if let Some(ip) = route_ip(a) {
                        r.dest = format!("{ip}/{}", msg.header.destination_prefix_length);
                    }
                }
                RouteAttribute::Gateway(a) => r.gateway = route_ip(a).map(|ip| ip.to_string()).unwrap_or_default(),
                RouteAttribute::PrefSource(a) => r.source = route_ip(a).map(|ip| ip.to_string()).unwrap_or_default(),
                RouteAttribute::Oif(i) => {
                    r.device = names.iter().find(|(idx, _)| idx == i).map(|(_, n)| n.clone()).unwrap_or_default()
                }
                _ => {}
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Replaces the main table: deletes every route the kernel did not make
/// itself (those follow the interfaces' addresses), then adds `routes`,
/// link routes before the gateway routes that go through them.
pub async fn update_routes(routes: &[Route]) -> Result<Vec<Route>, NetworkError> {
    let mut specs = routes.iter().map(RouteSpec::parse).collect::<Result<Vec<_>, _>>()?;
    add_order(&mut specs);
    let nl = Netlink::open()?;
    for old in nl.routes().await? {
        if old.header.protocol == RouteProtocol::Kernel || old.header.kind != RouteType::Unicast {
            continue;
        }
        nl.handle.route().del(old).execute().await.map_err(failed("delete an old route"))?;
    }
    for spec in &specs {
        let msg = route_message(spec, &nl).await?;
        let what = format!("add the route to {:?} via {:?} dev {:?}", spec.dest, spec.gateway, spec.device);
        nl.handle.route().add(msg).execute().await.map_err(failed(what))?;
    }
    drop(nl);
    list_routes().await
}

async fn route_message(spec: &RouteSpec, nl: &Netlink) -> Result<RouteMessage, NetworkError> {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = if spec.v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    h.table = RouteHeader::RT_TABLE_MAIN;
    h.protocol = RouteProtocol::Boot;
    h.kind = RouteType::Unicast;
    // Kata sends 0 (universe) for every route; a route with no gateway still
    // reaches only its link.
    h.scope = match (spec.scope, spec.gateway) {
        (0, None) => RouteScope::Link,
        (s, _) => RouteScope::from(s),
    };
    let (dest, len) = spec.dest.unwrap_or((convert::unspecified(spec.v6), 0));
    h.destination_prefix_length = len;
    if len > 0 {
        msg.attributes.push(RouteAttribute::Destination(dest.into()));
    }
    if let Some(gw) = spec.gateway {
        msg.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    if let Some(src) = spec.source {
        msg.attributes.push(RouteAttribute::PrefSource(src.into()));
    }
    if !spec.device.is_empty() {
        msg.attributes.push(RouteAttribute::Oif(nl.index_of(&spec.device).await?));
    }
    Ok(msg)
}

/// Adds (or replaces) static ARP/NDP entries; state 0 means permanent.
pub async fn add_arp_neighbors(neighbors: &[ARPNeighbor]) -> Result<(), NetworkError> {
    let nl = Netlink::open()?;
    for n in neighbors {
        let to = n.toIPAddress.as_ref().map(|a| a.address.as_str()).unwrap_or_default();
        let ip: IpAddr =
            to.parse().map_err(|_| NetworkError::InvalidArgument(format!("neighbour {to:?} is not an IP address")))?;
        let index = nl.index_of(&n.device).await?;
        let mut req = nl.handle.neighbours().add(index, ip).replace();
        if !n.lladdr.is_empty() {
            req = req.link_layer_address(&parse_mac(&n.lladdr)?);
        }
        let state =
            u16::try_from(n.state).ok().filter(|s| *s != 0).map_or(NeighbourState::Permanent, NeighbourState::from);
        let flags =
            u8::try_from(n.flags).map_err(|_| NetworkError::InvalidArgument(format!("neighbour flags {}", n.flags)))?;
        req = req.state(state).flags(NeighbourFlags::from_bits_retain(flags));
        req.execute().await.map_err(failed(format!("add neighbour {ip} on {}", n.device)))?;
    }
    Ok(())
}
