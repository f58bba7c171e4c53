#![cfg(feature = "vm-tests")]
//! Proves the harness on the smallest guest there is: a busybox `/init` that prints the guest
//! uptime and powers off (the "boot floor"), on q35 and on microvm; and a VM dropped mid-boot
//! leaves no process and no directory behind; the true floor (`floor-init/`) echoes on vsock
//! and powers off when the host hangs up.
//!
//! Needs the kernel and rootfs-builder (`make`); the floor initrd is packed here
//! ([`wisp_tests::floor`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;
use wisp_shim::agent_dial::{self, DialError};
use wisp_tests::floor::{self, FLOOR_INIT};
use wisp_tests::timeline::FLOOR_MARKER;
use wisp_tests::{Channel, Machine, Vm, VmConfig, VmError};

/// Prints what the agent channels look like from inside, then idles until killed.
const IDLE_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
[ -c /dev/console ] && exec >/dev/console 2>&1
for port in /sys/class/virtio-ports/*; do
  [ -e "$port/name" ] && echo "WISP-PORT $(/bin/busybox cat "$port/name")"
done
echo WISP-IDLE
exec /bin/busybox sleep 3600
"#;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// One VM at a time, so the measured boot times are not two guests sharing the host's cores.
fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Packs `init_script` as `/init` beside a static busybox, in a directory that goes with it.
fn busybox_initrd(init_script: &str) -> Result<(TempDir, PathBuf)> {
    let dir = tempfile::Builder::new().prefix("wisp-floor-").tempdir()?;
    let initrd = dir.path().join("floor.initrd");
    floor::busybox_initrd(init_script, &initrd)?;
    Ok((dir, initrd))
}

/// Boots the floor on `machine`, reports the times, and checks QEMU exits by itself.
fn boot_floor(machine: Machine) -> Result<()> {
    let _one = one_vm_at_a_time();
    let (_initrd_dir, initrd) = busybox_initrd(FLOOR_INIT)?;
    let mut vm = Vm::boot(VmConfig::for_machine(machine)?.initrd(&initrd))?;
    let to_marker = vm.wait_for_console("WISP-FLOOR", BOOT_TIMEOUT)?;
    let status = vm.wait_exit(BOOT_TIMEOUT)?;
    let total = vm.spawned_at().elapsed();

    let console = vm.console();
    let Some(line) = console.lines().find(|l| l.contains(FLOOR_MARKER)) else {
        bail!("no uptime line on the console:\n{}", vm.console_tail(40));
    };
    eprintln!(
        "floor {machine:?} ({}): spawn -> WISP-FLOOR {} ms, spawn -> qemu exit {} ms, guest: {}",
        vm.accel(),
        to_marker.as_millis(),
        total.as_millis(),
        line.trim()
    );
    ensure!(status.success(), "qemu exited with {status}; its log:\n{}", vm.qemu_log());
    Ok(())
}

#[test]
fn floor_boots_and_powers_off_on_q35() -> Result<()> {
    boot_floor(Machine::Q35)
}

#[test]
fn floor_boots_and_powers_off_on_microvm() -> Result<()> {
    boot_floor(Machine::Microvm)
}

#[test]
fn vm_in_a_panicking_test_is_cleaned_up() -> Result<()> {
    let _one = one_vm_at_a_time();
    let (_initrd_dir, initrd) = busybox_initrd(FLOOR_INIT)?;
    let config = VmConfig::for_machine(Machine::Microvm)?.initrd(&initrd);
    let mut seen: Option<(Vec<u32>, PathBuf)> = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let vm = Vm::boot(config).expect("boot");
        seen = Some((vm.pids(), vm.dir().to_owned()));
        panic!("a test fails while its VM boots");
    }));
    ensure!(outcome.is_err(), "the closure was expected to panic");
    let (pids, dir) = seen.context("the VM did not boot")?;
    let left: Vec<u32> = pids.into_iter().filter(|&pid| alive(pid)).collect();
    ensure!(left.is_empty(), "still running after the panic: {left:?}");
    ensure!(!dir.exists(), "{} still exists after the panic", dir.display());
    Ok(())
}

#[test]
fn connect_agent_fails_fast_when_the_guest_powers_off() -> Result<()> {
    let _one = one_vm_at_a_time();
    let (_initrd_dir, initrd) = busybox_initrd(FLOOR_INIT)?;
    let config = VmConfig::for_machine(Machine::Microvm)?.initrd(&initrd).channel(Channel::HybridVsock);
    let mut vm = Vm::boot(config)?;
    // The floor has no agent and powers off: the error must come with the exit, not after 60 s.
    let err = block_on(vm.connect_agent(BOOT_TIMEOUT))?.err().context("connected to an agent that does not exist")?;
    let VmError::QemuExited { ref console, .. } = err else {
        bail!("expected qemu to have exited, got {err:?}");
    };
    ensure!(console.contains("WISP-FLOOR"), "console tail lacks the floor line: {err}");
    ensure!(vm.spawned_at().elapsed() < Duration::from_secs(30), "not fast: {err}");
    Ok(())
}

#[test]
fn connect_agent_without_a_channel_is_an_error() -> Result<()> {
    let _one = one_vm_at_a_time();
    let (_initrd_dir, initrd) = busybox_initrd(FLOOR_INIT)?;
    let mut vm = Vm::boot(VmConfig::for_machine(Machine::Microvm)?.initrd(&initrd))?;
    let err = block_on(vm.connect_agent(BOOT_TIMEOUT))?.err();
    ensure!(matches!(err, Some(VmError::NoChannel)), "{err:?}");
    Ok(())
}

/// Runs `future` on a fresh single-threaded runtime (the VM tests themselves stay synchronous).
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("building a tokio runtime")?;
    Ok(runtime.block_on(future))
}

/// Whether `pid` is still a process (not reaped, or reused by something else).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn vm_dropped_mid_boot_leaves_nothing_behind() -> Result<()> {
    let _one = one_vm_at_a_time();
    let (_initrd_dir, initrd) = busybox_initrd(FLOOR_INIT)?;
    // The vsock channel adds a helper process to clean up.
    let config = VmConfig::for_machine(Machine::Q35)?.initrd(&initrd).channel(Channel::HybridVsock).qmp(true);
    let mut vm = Vm::boot(config)?;
    // Mid-boot: the kernel is running, /init has not powered off yet.
    vm.wait_for_console("Linux version", BOOT_TIMEOUT)?;
    ensure!(vm.try_exit_status()?.is_none(), "the VM already exited");

    let pids = vm.pids();
    let dir = vm.dir().to_owned();
    ensure!(pids.len() == 2, "expected qemu and vhost-device-vsock, got {pids:?}");
    ensure!(pids.iter().all(|&pid| alive(pid)), "a process died early: {pids:?}");
    ensure!(vm.paths().hybrid_vsock_socket().exists(), "no hybrid vsock socket");

    drop(vm);

    let left: Vec<u32> = pids.into_iter().filter(|&pid| alive(pid)).collect();
    ensure!(left.is_empty(), "still running after drop: {left:?}");
    ensure!(!dir.exists(), "{} still exists after drop", dir.display());
    Ok(())
}

#[test]
fn hybrid_vsock_reaches_the_guest_kernel_on_q35() -> Result<()> {
    let _one = one_vm_at_a_time();
    let (_initrd_dir, initrd) = busybox_initrd(IDLE_INIT)?;
    let config = VmConfig::for_machine(Machine::Q35)?.initrd(&initrd).channel(Channel::HybridVsock);
    let mut vm = Vm::boot(config)?;
    vm.wait_for_console("WISP-IDLE", BOOT_TIMEOUT)?;
    let addr = vm.agent_addr().context("no agent address")?;

    // Nothing listens on port 1024 in this guest: its vsock transport resets the connection and
    // the backend closes ours. A guest without working vsock would leave the backend silent.
    let err = block_on(agent_dial::dial(&addr, Duration::from_millis(1500)))?
        .err()
        .context("dial succeeded but nothing listens in the guest")?;
    let DialError::Timeout { last, .. } = &err else {
        bail!("expected a timeout, got {err:?}");
    };
    ensure!(matches!(**last, DialError::BackendClosed { .. }), "the guest did not answer over vsock: {err}: {last}");
    Ok(())
}

#[test]
fn serial_port_is_named_and_reachable_on_microvm() -> Result<()> {
    let _one = one_vm_at_a_time();
    let (_initrd_dir, initrd) = busybox_initrd(IDLE_INIT)?;
    let config = VmConfig::for_machine(Machine::Microvm)?.initrd(&initrd).channel(Channel::Serial);
    let mut vm = Vm::boot(config)?;
    vm.wait_for_console("WISP-IDLE", BOOT_TIMEOUT)?;
    ensure!(
        vm.console().contains("WISP-PORT agent.channel.0"),
        "the guest has no agent.channel.0 port:\n{}",
        vm.console_tail(40)
    );
    let addr = vm.agent_addr().context("no agent address")?;
    block_on(agent_dial::dial(&addr, Duration::from_secs(5)))??;
    Ok(())
}

#[test]
fn true_floor_echoes_on_vsock_and_powers_off_on_q35() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _one = one_vm_at_a_time();
    let dir = tempfile::Builder::new().prefix("wisp-true-floor-").tempdir()?;
    let initrd = dir.path().join("true-floor.cpio");
    floor::true_floor_initrd("none", &initrd)?;
    ensure!(std::fs::metadata(&initrd)?.len() < 100_000, "the true floor's initrd is not tiny");
    let config = VmConfig::for_machine(Machine::Q35)?.initrd(&initrd).channel(Channel::HybridVsock);
    let mut vm = Vm::boot(config)?;
    vm.wait_for_console(FLOOR_MARKER, BOOT_TIMEOUT)?;
    let addr = vm.agent_addr().context("no agent address")?;
    let sent = b"\x00\x00\x00\x05\x00\x00\x00\x01\x01\x00hello".to_vec();
    let back = block_on(async {
        let mut stream = agent_dial::dial(&addr, Duration::from_secs(20)).await?;
        stream.write_all(&sent).await?;
        let mut back = vec![0u8; sent.len()];
        stream.read_exact(&mut back).await?;
        anyhow::Ok(back)
    })??;
    ensure!(back == sent, "the true floor echoed {back:?}");
    // Hanging up ends the session: the floor powers the VM off.
    let status = vm.wait_exit(BOOT_TIMEOUT)?;
    ensure!(status.success(), "qemu exited with {status}; its log:\n{}", vm.qemu_log());
    let console = vm.console();
    let line = console.lines().find(|l| l.contains(FLOOR_MARKER)).context("no WISP-FLOOR line")?;
    ensure!(line.contains(" port=1024"), "{line}");
    Ok(())
}
