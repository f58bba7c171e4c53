//! The shim's own input parsers: its configuration file and Kata's direct-volume
//! `mountInfo.json`.

use std::path::Path;

use wisp_shim::config::Config;
use wisp_shim::hypervisor::qemu::{cmdline, QemuSpec};
use wisp_shim::hypervisor::stratovirt::{cmdline as sv_cmdline, StratoVirtSpec};
use wisp_shim::hypervisor::VmPaths;
use wisp_shim::volumes::direct;

/// Target `shim_config`: TOML as `$WISP_CONFIG` or `/etc/wisp/configuration.toml` holds it.
/// A configuration that parses and validates is resolved as a sandbox start does and turned
/// into the QEMU or StratoVirt command line: nothing on that path may panic.
///
/// The accelerator comes from `WISP_ACCEL` (the harness sets `tcg` once, [`shim_config_init`]):
/// `accel = "auto"` would otherwise start QEMU to probe KVM.
pub fn shim_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match Config::parse(text, Path::new("/fuzz/configuration.toml")) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = (config.block_rootfs(), config.agent.dial_timeout(), config.source_name());
    let dir = Path::new("/nonexistent/wisp-fuzz/sandbox");
    let paths = VmPaths::new(dir);
    match config.stratovirt() {
        Some(section) => {
            let spec = StratoVirtSpec::resolve(section, dir, config.agent.debug_console_enabled);
            let _ = sv_cmdline::kernel_cmdline(&spec);
            let _ = sv_cmdline::stratovirt_args(&spec, &paths, &[]);
        }
        None => {
            if let Ok(spec) = QemuSpec::resolve(&config, dir, false) {
                let _ = cmdline::kernel_cmdline(&spec);
                let args = cmdline::qemu_args(&spec, &paths);
                let _ = cmdline::shell_line("qemu", &args);
                let _ = cmdline::vsock_helper_args(&spec, &paths);
                let _ = cmdline::virtiofsd_args(&spec, &paths);
            }
        }
    }
}

/// Once per process, before [`shim_config`]: no KVM probe (see there).
pub fn shim_config_init() {
    // SAFETY: called once at the start of a single-threaded fuzz process (or test binary
    // main), before any thread that could read the environment exists.
    unsafe { std::env::set_var(wisp_shim::accel::ACCEL_ENV, "tcg") };
}

/// Target `direct_volume`: the first line is the volume path (what `ctr run --mount
/// type=directvol,src=PATH` names), the rest its `mountInfo.json`.
///
/// Checks kata-ctl's layout both ways: the directory name of a valid volume path decodes
/// back to it, and a directory name that decodes re-encodes to itself (a listing never sees
/// one volume under two names).
pub fn direct_volume(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (first, json) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let volume = String::from_utf8_lossy(first);
    let root = Path::new("/nonexistent/wisp-fuzz/direct-volumes");
    if let Ok(dir) = direct::volume_dir(root, &volume) {
        let name = dir.file_name().and_then(|n| n.to_str()).expect("an encoded name is ASCII");
        assert_eq!(direct::decode(name).as_deref(), Some(volume.as_bytes()), "volume dir name does not decode back");
    }
    if let Ok(name) = std::str::from_utf8(first) {
        if let Some(bytes) = direct::decode(name) {
            assert_eq!(direct::encode(&bytes), name, "a directory name decodes but is not what encode writes");
        }
    }
    match direct::parse(&volume, json, &root.join("x").join(direct::MOUNT_INFO)) {
        Ok(info) => {
            let text = serde_json::to_vec(&info).expect("a MountInfo serializes");
            let again = direct::parse(&volume, &text, Path::new("again")).expect("written mountInfo reads back");
            assert_eq!(again, info, "mountInfo changed on write and read");
            // `source` stats the device: only for vfiovol, whose address check is pure
            // unless it names /dev/vfio/N.
            if info.volume_type == "vfiovol" && !info.device.starts_with("/dev/vfio/") {
                let _ = direct::source(&volume, &info);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
