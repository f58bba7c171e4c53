#![cfg(feature = "vm-tests")]
//! The agent configuring a real guest's network: a q35 VM with a virtio-net
//! NIC on QEMU's user-mode network (10.0.2.0/24, gateway 10.0.2.2), driven
//! over the Kata protocol the way a runtime does after creating the sandbox.
//! Also the volume RPCs on the guest's root file system.
//!
//! Needs `make` (kernel, static agent, initrds) and QEMU with user networking.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use protocols::agent::{
    ARPNeighbors, AddARPNeighborsRequest, DestroySandboxRequest, ListInterfacesRequest, ListRoutesRequest,
    ResizeVolumeRequest, Routes, UpdateInterfaceRequest, UpdateRoutesRequest, VolumeStatsRequest,
};
use protocols::csi::volume_usage::Unit;
use protocols::ttrpc::{self, context, Code};
use protocols::types::{ARPNeighbor, IPAddress, Interface, Route};
use wisp_tests::{Channel, Machine, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(90);
const MAC: &str = "52:54:00:12:34:56";
/// IFF_UP from <linux/if.h>.
const IFF_UP: u32 = 0x1;

fn ctx() -> ttrpc::context::Context {
    context::with_timeout(20_000_000_000)
}

fn rpc_code(e: ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => (Code::UNKNOWN, format!("{other:?}")),
    }
}

fn address(ip: &str, mask: &str) -> IPAddress {
    let mut a = IPAddress::new();
    a.address = ip.into();
    a.mask = mask.into();
    a
}

fn route(dest: &str, gateway: &str, device: &str) -> Route {
    let mut r = Route::new();
    r.dest = dest.into();
    r.gateway = gateway.into();
    r.device = device.into();
    r
}

fn neighbours(ip: &str, device: &str, lladdr: &str) -> AddARPNeighborsRequest {
    let mut n = ARPNeighbor::new();
    n.toIPAddress = Some(address(ip, "")).into();
    n.device = device.into();
    n.lladdr = lladdr.into();
    let mut list = ARPNeighbors::new();
    list.ARPNeighbors = vec![n];
    let mut req = AddARPNeighborsRequest::new();
    req.neighbors = Some(list).into();
    req
}

#[test]
fn q35_guest_network_is_configured_over_the_protocol() -> Result<()> {
    let config = VmConfig::wisp(Machine::Q35)?.channel(Channel::HybridVsock).qemu_args_extra([
        "-netdev".to_owned(),
        "user,id=n0".to_owned(),
        "-device".to_owned(),
        format!("virtio-net-pci,netdev=n0,mac={MAC}"),
    ]);
    let mut vm = Vm::boot(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let conn = vm.connect_agent(BOOT).await?;
        let agent = conn.agent();

        // Init brings lo up right after the agent serves (after_ready).
        let mut listed = Vec::new();
        for _ in 0..100 {
            listed = agent.list_interfaces(ctx(), &ListInterfacesRequest::new()).await?.Interfaces;
            if listed.iter().any(|i| i.name == "lo" && i.raw_flags & IFF_UP != 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lo = listed.iter().find(|i| i.name == "lo").context("lo listed")?;
        ensure!(lo.raw_flags & IFF_UP != 0, "init brought lo up: flags {:#x}", lo.raw_flags);
        ensure!(lo.IPAddresses.iter().any(|a| a.address == "127.0.0.1" && a.mask == "8"), "lo: {lo:?}");
        let nic = listed.iter().find(|i| i.hwAddr == MAC).with_context(|| format!("NIC {MAC} in {listed:?}"))?;
        ensure!(nic.name == "eth0", "the virtio NIC is eth0: {nic:?}");
        ensure!(nic.raw_flags & IFF_UP == 0, "eth0 starts down: {nic:?}");

        let mut iface = Interface::new();
        iface.hwAddr = MAC.into();
        iface.name = "eth0".into();
        iface.mtu = 1500;
        iface.IPAddresses = vec![address("10.0.2.15", "24")];
        let mut req = UpdateInterfaceRequest::new();
        req.interface = Some(iface).into();
        let eth0 = agent.update_interface(ctx(), &req).await.context("UpdateInterface")?;
        ensure!(eth0.raw_flags & IFF_UP != 0, "eth0 up: {eth0:?}");
        ensure!(eth0.IPAddresses.iter().any(|a| a.address == "10.0.2.15" && a.mask == "24"), "{eth0:?}");

        let mut routes = Routes::new();
        routes.Routes = vec![route("", "10.0.2.2", "eth0")];
        let mut req = UpdateRoutesRequest::new();
        req.routes = Some(routes).into();
        agent.update_routes(ctx(), &req).await.context("UpdateRoutes")?;
        let listed = agent.list_routes(ctx(), &ListRoutesRequest::new()).await?.Routes;
        ensure!(
            listed.iter().any(|r| r.dest.is_empty() && r.gateway == "10.0.2.2" && r.device == "eth0"),
            "default route via 10.0.2.2 in {listed:?}"
        );
        ensure!(listed.iter().any(|r| r.dest == "10.0.2.0/24" && r.device == "eth0"), "link route: {listed:?}");

        agent.add_arp_neighbors(ctx(), &neighbours("10.0.2.2", "eth0", "52:55:0a:00:02:02")).await?;
        let (code, msg) = rpc_code(
            agent.add_arp_neighbors(ctx(), &neighbours("10.0.2.3", "eth9", "52:55:0a:00:02:03")).await.unwrap_err(),
        );
        ensure!(code == Code::NOT_FOUND && msg.contains("eth9"), "{code:?}: {msg}");

        // The initramfs root: statfs answers; it is not ext4, so no resize.
        let mut req = VolumeStatsRequest::new();
        req.volume_guest_path = "/".into();
        let stats = agent.get_volume_stats(ctx(), &req).await.context("GetVolumeStats")?;
        let bytes = stats.usage.first().context("usage")?;
        ensure!(bytes.unit.enum_value() == Ok(Unit::BYTES) && bytes.total > 0, "{stats:?}");
        let mut req = ResizeVolumeRequest::new();
        req.volume_guest_path = "/".into();
        let (code, msg) = rpc_code(agent.resize_volume(ctx(), &req).await.unwrap_err());
        ensure!(code == Code::FAILED_PRECONDITION && msg.contains("only ext4"), "{code:?}: {msg}");

        agent.destroy_sandbox(ctx(), &DestroySandboxRequest::new()).await?;
        let status = vm.wait_exit(Duration::from_secs(60))?;
        ensure!(status.success(), "qemu exit {status}; console:\n{}", vm.console_tail(20));
        Ok(())
    })
}
