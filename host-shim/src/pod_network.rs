//! A CRI pod's network reaching its VM (Kata's "tcfilter" model).
//!
//! containerd runs CNI in a fresh network namespace before it creates the sandbox, which then
//! holds an interface (`eth0`: a veth into the bridge, with the pod's addresses and routes).
//! The VM cannot use that interface itself, so the shim:
//! 1. reads it (MAC, MTU, addresses, routes) in the namespace;
//! 2. creates a tap there and redirects every frame both ways between the two with tc
//!    (ingress qdisc + `mirred egress redirect` on each), so the tap is a wire to the veth;
//! 3. gives the tap's descriptor to QEMU as a virtio-net NIC with eth0's MAC;
//! 4. once the agent answers, configures the guest NIC (found by that MAC) with eth0's
//!    addresses and MTU (UpdateInterface) and the routes (UpdateRoutes).
//!
//! The pod's IP then lives in the guest; the bridge sees the same MAC behind the veth as CNI
//! set up. Nothing is made in the host namespace: the tap (gone when QEMU closes it) and the
//! tc rules live in the pod's namespace, which containerd deletes with the pod.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::Path;

use protocols::types::{IPAddress, IPFamily, Interface, Route};
use serde::Deserialize;

use crate::netns::{NetNs, NetNsError};

/// The tap's name in the pod's namespace.
pub const TAP_NAME: &str = "tap0_wisp";
/// The interface CNI creates (containerd's CRI always asks for `eth0`).
const CNI_IFNAME: &str = "eth0";
/// `RT_SCOPE_LINK`.
const SCOPE_LINK: u32 = 253;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// Work in the namespace failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// `ip -j` printed something else than expected.
    #[error("cannot parse `ip -j {what}` of {netns}: {source}")]
    Parse {
        /// The command.
        what: &'static str,
        /// The namespace.
        netns: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// No interface to hand to the VM.
    #[error("no CNI interface (eth0, or an ethernet link with an address) in {0}")]
    NoInterface(String),
}

/// One link of `ip -j addr show`.
#[derive(Debug, Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

/// One address of a link.
#[derive(Debug, Deserialize)]
struct IpAddrInfo {
    local: IpAddr,
    prefixlen: u8,
}

/// One route of `ip -j route show`.
#[derive(Debug, Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    gateway: String,
    #[serde(default)]
    dev: String,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    prefsrc: String,
}

/// The pod interface as the guest gets it, and the tap wired to it.
#[derive(Debug)]
pub struct PodNetwork {
    /// The interface's name (the guest NIC gets the same).
    pub ifname: String,
    /// Its MAC (the guest NIC's).
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses (no IPv6 link-local: the guest kernel makes its own).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Its routes, except the kernel's own (those follow the addresses).
    pub routes: Vec<Route>,
    tap: Option<OwnedFd>,
}

impl PodNetwork {
    /// Reads the CNI interface of the namespace at `path`, creates the tap and the tc redirects.
    /// `None` when `path` is the shim's own namespace (host networking: nothing to wire).
    pub fn setup(path: &Path) -> Result<Option<Self>, PodNetworkError> {
        let ns = NetNs::open(path)?;
        let netns = path.display().to_string();
        if ns.is_own()? {
            return Ok(None);
        }
        let links: Vec<IpLink> = serde_json::from_str(&ns.run("ip", &["-j", "addr", "show"])?)
            .map_err(|source| PodNetworkError::Parse { what: "addr show", netns: netns.clone(), source })?;
        let link = choose(&links).ok_or_else(|| PodNetworkError::NoInterface(netns.clone()))?;
        let mut routes = Vec::new();
        for family in ["-4", "-6"] {
            let listed: Vec<IpRoute> = serde_json::from_str(&ns.run("ip", &["-j", family, "route", "show"])?)
                .map_err(|source| PodNetworkError::Parse { what: "route show", netns: netns.clone(), source })?;
            routes.extend(listed.iter().filter(|r| r.dev == link.ifname).filter_map(guest_route));
        }
        let addresses = link
            .addr_info
            .iter()
            .filter(|a| !matches!(a.local, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .map(|a| (a.local, a.prefixlen))
            .collect();
        let tap = ns.open_tap(TAP_NAME)?;
        let mtu = link.mtu.to_string();
        ns.run("ip", &["link", "set", "dev", TAP_NAME, "mtu", &mtu, "up"])?;
        for (from, to) in [(link.ifname.as_str(), TAP_NAME), (TAP_NAME, link.ifname.as_str())] {
            ns.run("tc", &["qdisc", "replace", "dev", from, "ingress"])?;
            // A second setup in the same namespace (a cold boot after a clone that failed)
            // finds the first one's redirect still there, aimed at a tap that is gone.
            let _ = ns.run("tc", &["filter", "del", "dev", from, "parent", "ffff:"]);
            ns.run(
                "tc",
                &[
                    "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0",
                    "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )?;
        }
        Ok(Some(Self {
            ifname: link.ifname.clone(),
            mac: link.address.clone(),
            mtu: link.mtu,
            addresses,
            routes,
            tap: Some(tap),
        }))
    }

    /// The tap's descriptor, for QEMU to inherit (until [`PodNetwork::release_tap`]).
    pub fn tap_fd(&self) -> Option<i32> {
        self.tap.as_ref().map(std::os::fd::AsRawFd::as_raw_fd)
    }

    /// Closes the shim's copy of the tap once QEMU holds its own: the tap then goes with QEMU.
    pub fn release_tap(&mut self) {
        self.tap = None;
    }

    /// The guest NIC as UpdateInterface wants it (found by MAC, renamed to `ifname`).
    pub fn interface(&self) -> Interface {
        let mut iface = Interface::new();
        iface.device = self.ifname.clone();
        iface.name = self.ifname.clone();
        iface.hwAddr = self.mac.clone();
        iface.mtu = u64::from(self.mtu);
        iface.IPAddresses = self
            .addresses
            .iter()
            .map(|(ip, len)| {
                let mut a = IPAddress::new();
                a.family = if ip.is_ipv6() { IPFamily::v6 } else { IPFamily::v4 }.into();
                a.address = ip.to_string();
                a.mask = len.to_string();
                a
            })
            .collect();
        iface
    }
}

/// CNI's interface: `eth0`, else the first ethernet link with an address.
fn choose(links: &[IpLink]) -> Option<&IpLink> {
    links
        .iter()
        .find(|l| l.ifname == CNI_IFNAME)
        .or_else(|| links.iter().find(|l| l.link_type == "ether" && l.ifname != TAP_NAME && !l.addr_info.is_empty()))
}

/// A namespace route as the guest's, or `None` for the kernel's own.
fn guest_route(r: &IpRoute) -> Option<Route> {
    if r.protocol == "kernel" || r.dst.starts_with("fe80:") || r.dst.starts_with("ff00:") {
        return None;
    }
    let mut route = Route::new();
    route.dest = if r.dst == "default" { String::new() } else { r.dst.clone() };
    route.gateway = r.gateway.clone();
    route.device = r.dev.clone();
    route.source = r.prefsrc.clone();
    route.scope = if r.scope == "link" { SCOPE_LINK } else { 0 };
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ip -j addr show` and `ip -j -4 route show` print in a pod namespace after the
    /// bridge plugin (iproute2 6.1).
    const ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
        {"ifindex":2,"link_index":9,"ifname":"eth0","flags":["BROADCAST","UP"],"mtu":1450,"link_type":"ether","address":"aa:bb:cc:dd:ee:01",
         "addr_info":[{"family":"inet","local":"10.99.0.5","prefixlen":24,"scope":"global"},{"family":"inet6","local":"fe80::a8bb:ccff:fedd:ee01","prefixlen":64,"scope":"link"}]}]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"10.99.0.1","dev":"eth0","flags":[]},
        {"dst":"10.99.0.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.99.0.5","flags":[]},
        {"dst":"10.100.0.0/16","dev":"eth0","scope":"link","flags":[]}]"#;

    #[test]
    fn the_cni_interface_and_its_routes_become_the_guests() {
        let links: Vec<IpLink> = serde_json::from_str(ADDRS).unwrap();
        let link = choose(&links).unwrap();
        assert_eq!((link.ifname.as_str(), link.mtu), ("eth0", 1450));
        let routes: Vec<IpRoute> = serde_json::from_str(ROUTES).unwrap();
        let routes: Vec<Route> = routes.iter().filter_map(guest_route).collect();
        assert_eq!(routes.len(), 2, "the kernel's link route is left to the guest kernel: {routes:?}");
        assert_eq!(
            (routes[0].dest.as_str(), routes[0].gateway.as_str(), routes[0].device.as_str()),
            ("", "10.99.0.1", "eth0")
        );
        assert_eq!((routes[1].dest.as_str(), routes[1].scope), ("10.100.0.0/16", SCOPE_LINK));

        let net = PodNetwork {
            ifname: link.ifname.clone(),
            mac: link.address.clone(),
            mtu: link.mtu,
            addresses: vec![(link.addr_info[0].local, 24)],
            routes,
            tap: None,
        };
        let iface = net.interface();
        assert_eq!((iface.hwAddr.as_str(), iface.name.as_str(), iface.mtu), ("aa:bb:cc:dd:ee:01", "eth0", 1450));
        assert_eq!(iface.IPAddresses.len(), 1);
        assert_eq!((iface.IPAddresses[0].address.as_str(), iface.IPAddresses[0].mask.as_str()), ("10.99.0.5", "24"));
    }

    #[test]
    fn without_eth0_an_ethernet_link_with_an_address_is_taken() {
        let links: Vec<IpLink> = serde_json::from_str(
            r#"[{"ifname":"lo","link_type":"loopback","addr_info":[{"local":"127.0.0.1","prefixlen":8}]},
                {"ifname":"tap0_wisp","link_type":"ether","addr_info":[]},
                {"ifname":"net1","link_type":"ether","address":"02:00:00:00:00:01","addr_info":[{"local":"fd00::5","prefixlen":64}]}]"#,
        )
        .unwrap();
        assert_eq!(choose(&links).map(|l| l.ifname.as_str()), Some("net1"));
        assert!(choose(&links[..2]).is_none());
    }
}
