//! Sandboxes cloned from a booted template VM (Kata's VM templating, `[factory] template`).
//!
//! `wisp template create` boots the configured VM once to agent-ready with its RAM in a file
//! (`memory`, mapped shared, on the state root's tmpfs), pauses it and saves its device state
//! with `x-ignore-shared` (`state`: a few hundred KiB, the RAM is the file). A sandbox whose VM
//! matches then starts QEMU with the same devices, the RAM file mapped privately (copy-on-write:
//! clones share the template's pages until they write them) and `-incoming` from `state`: the
//! agent answers a few hundred milliseconds after QEMU's exec instead of a whole kernel boot.
//!
//! # What a template is
//! QEMU 7.2 cannot migrate vhost-user devices nor give them a clone's private RAM, and 9p
//! migrates only while the guest has not mounted it, so a template's VM is the configured one
//! with the agent on virtio-serial and the share over 9p ([`QemuSpec::for_template`]); the
//! guest mounts the share at CreateSandbox, after the restore. VMs a template cannot stand for
//! (microvm, rootless QEMU, a vhost-user disk: [`QemuSpec::template_blocker`]) boot cold; a
//! pod's NIC is hot-plugged into the clone after the restore, before it runs again.
//!
//! # Matching
//! A template is kept under `<templates>/<key>/`, where the key hashes what the restored
//! QEMU depends on: its command line for that spec (with the VM's own paths left out) and the
//! identity (device, inode, size, modification time) of the QEMU binary, firmware, kernel and
//! initrd. A rebuilt initrd or a changed configuration makes a new key, and the old template is
//! never used for it: the sandbox boots cold. A pod's resources make its VM bigger than the
//! configured one; the template of the same VM at its own, smaller size serves it, and the clone
//! gets the difference by hot-plug after the restore ([`Growth`], [`find`]).
//!
//! # What a clone must do first
//! All clones of one template start with the same kernel RNG state, clock and boot id; the
//! sandbox core reseeds the guest's RNG from the host (ReseedRandomDev, 512 bytes) and sets its
//! clock (SetGuestDateTime) before anything else runs ([`crate::sandbox`]). What stays shared
//! (KASLR layout, the template's pages until written) is docs/security.md's.
//!
//! Templates are trusted input: the directory is root's, 0700, and a clone's QEMU opens the
//! state read-only (the shim hands it the descriptor) and maps the RAM file privately.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use slog::{info, Logger};

use crate::config::Config;
use crate::hypervisor::qemu::cmdline;
use crate::hypervisor::qemu::config::{QemuSpec, TemplateRole, MEMORY_BLOCK_MIB, TEMPLATE_MAX_MEMORY_MIB};
use crate::hypervisor::qemu::Qemu;
use crate::hypervisor::qmp::QmpError;
use crate::hypervisor::{Growth, Hypervisor, HypervisorError, VmPaths};
use crate::sandbox::SandboxError;

/// The templates' directory under the state root, unless `[factory] template_path` says otherwise.
pub const DEFAULT_DIR_NAME: &str = "templates";
/// The template's RAM file.
pub const MEMORY_FILE: &str = "memory";
/// The template's device state.
pub const STATE_FILE: &str = "state";
/// What the template is, for `wisp template list`.
pub const META_FILE: &str = "template.json";
/// How long the device state may take to save.
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the agent gets to see the host hang up before the VM is paused, so a clone's
/// agent waits for its host afresh, as after a cold boot.
const DETACH_SETTLE: Duration = Duration::from_millis(500);

/// What can go wrong with templates.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// This VM cannot be a template.
    #[error("this VM cannot be a template: {0}")]
    Unsupported(String),
    /// QEMU could not start.
    #[error("cannot start the template VM")]
    Hypervisor(#[from] HypervisorError),
    /// The agent did not come up.
    #[error("the template VM's agent did not answer")]
    Boot(#[source] Box<SandboxError>),
    /// QMP failed while saving.
    #[error("cannot save the template VM")]
    Qmp(#[from] QmpError),
    /// A file could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No template has that key.
    #[error("no template {0}")]
    NotFound(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TemplateError + 'a {
    move |source| TemplateError::Io { what, path: path.to_owned(), source }
}

/// What `template.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    /// The matching key (the directory's name).
    pub key: String,
    /// When it was saved (ms since the epoch).
    pub created_unix_ms: u64,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// The kernel it booted.
    pub kernel: PathBuf,
    /// The initrd it booted.
    pub initrd: Option<PathBuf>,
    /// QEMU spawn to agent-ready, ms.
    pub boot_ms: u64,
    /// Bytes of device state.
    pub state_bytes: u64,
}

/// A template on disk.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its directory.
    pub dir: PathBuf,
    /// What it records.
    pub meta: TemplateMeta,
}

impl Template {
    /// How a clone of it boots, `growth` added once restored.
    pub fn restore_role(&self, growth: Growth) -> TemplateRole {
        TemplateRole::Restore { memory: self.dir.join(MEMORY_FILE), state: self.dir.join(STATE_FILE), growth }
    }
}

/// Where `config` keeps templates: `[factory] template_path`, else `<state root>/templates`.
pub fn templates_dir(config: &Config, state_root: &Path) -> PathBuf {
    config.factory.template_path.clone().unwrap_or_else(|| state_root.join(DEFAULT_DIR_NAME))
}

/// The key of a template standing for `spec` (already in [`QemuSpec::for_template`] form).
pub fn key(spec: &QemuSpec) -> String {
    let mut keyed = spec.clone();
    keyed.template = Some(TemplateRole::Save { memory: "/template/memory".into() });
    // A pod's NIC is plugged into the clone: not part of what the template is.
    keyed.tap_nic = None;
    let mut hash = Sha256::new();
    for arg in cmdline::qemu_args(&keyed, &VmPaths::new("/template/vm")) {
        hash.update(arg.as_bytes());
        hash.update([0]);
    }
    let files = [Some(&spec.qemu), spec.bios.as_ref(), Some(&spec.kernel), spec.initrd.as_ref()];
    for path in files.into_iter().flatten() {
        let identity = fs::metadata(path).map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
        hash.update(format!("{}={identity:?}\0", path.display()).as_bytes());
    }
    hash.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The template standing for `spec` (a configured VM, before [`QemuSpec::for_template`]) in
/// `templates` and what a clone of it must grow by, or why there is none.
///
/// A template of `spec`'s own size comes first. Otherwise a smaller template of the same VM
/// serves (a pod's resources make its VM bigger than the configured one the template was made
/// from): `spec` at that template's size has its key, and the clone gets the difference by
/// hot-plug, the RAM rounded up to whole memory blocks.
pub fn find(spec: &QemuSpec, templates: &Path) -> Result<(Template, Growth), String> {
    let spec = spec.clone().for_template();
    if let Some(blocker) = spec.template_blocker() {
        return Err(blocker.to_owned());
    }
    let key = key(&spec);
    let dir = templates.join(&key);
    let exact = read(&dir);
    let (template, growth) = match exact {
        Ok(template) => (template, Growth::default()),
        Err(err) => smaller(&spec, templates).ok_or_else(|| {
            format!("no template {key} (nor a smaller one of this VM) in {}: {err}", templates.display())
        })?,
    };
    for file in [MEMORY_FILE, STATE_FILE] {
        if !template.dir.join(file).is_file() {
            return Err(format!("template {} has no {file}", template.meta.key));
        }
    }
    Ok((template, growth))
}

/// A template of `spec`'s VM (template form) at a smaller size that a clone can grow from.
fn smaller(spec: &QemuSpec, templates: &Path) -> Option<(Template, Growth)> {
    if spec.vcpus > spec.max_vcpus || spec.memory_mib > TEMPLATE_MAX_MEMORY_MIB {
        return None;
    }
    list(templates).into_iter().rev().find_map(|template| {
        let meta = &template.meta;
        if meta.vcpus > spec.vcpus || meta.memory_mib > spec.memory_mib {
            return None;
        }
        let mut at = spec.clone();
        (at.vcpus, at.memory_mib) = (meta.vcpus, meta.memory_mib);
        if key(&at) != meta.key {
            return None;
        }
        let memory_mib = (spec.memory_mib - meta.memory_mib).div_ceil(MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB;
        let growth = Growth { vcpus: spec.vcpus - meta.vcpus, memory_mib };
        // The rounding must still fit in the template's maxmem.
        (meta.memory_mib + memory_mib <= TEMPLATE_MAX_MEMORY_MIB).then_some((template, growth))
    })
}

/// The template in `dir`.
fn read(dir: &Path) -> Result<Template, TemplateError> {
    let path = dir.join(META_FILE);
    let text = fs::read_to_string(&path).map_err(io("cannot read", &path))?;
    let meta: TemplateMeta = serde_json::from_str(&text).map_err(|err| TemplateError::Io {
        what: "cannot parse",
        path: path.clone(),
        source: err.into(),
    })?;
    Ok(Template { dir: dir.to_owned(), meta })
}

/// Every template in `templates`, oldest first.
pub fn list(templates: &Path) -> Vec<Template> {
    let mut found: Vec<Template> = fs::read_dir(templates)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|entry| read(&entry.path()).ok())
        .collect();
    found.sort_by_key(|t| t.meta.created_unix_ms);
    found
}

/// Removes template `key` (a whole directory name from [`list`]).
pub fn remove(templates: &Path, key: &str) -> Result<(), TemplateError> {
    if key.is_empty() || key.contains('/') || key.starts_with('.') {
        return Err(TemplateError::NotFound(key.to_owned()));
    }
    let dir = templates.join(key);
    if !dir.join(META_FILE).is_file() {
        return Err(TemplateError::NotFound(key.to_owned()));
    }
    fs::remove_dir_all(&dir).map_err(io("cannot remove", &dir))
}

/// Boots `config`'s VM in template form, waits for its agent, and saves it under `templates`
/// (replacing a template of the same key). `state_root` holds the accelerator cache.
pub async fn create(
    config: &Config,
    state_root: &Path,
    templates: &Path,
    log: &Logger,
) -> Result<Template, TemplateError> {
    let spec = QemuSpec::resolve(config, state_root, true)?.for_template();
    if let Some(blocker) = spec.template_blocker() {
        return Err(TemplateError::Unsupported(blocker.to_owned()));
    }
    let key = key(&spec);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(templates).map_err(io("cannot create", templates))?;
    fs::set_permissions(templates, fs::Permissions::from_mode(0o700)).map_err(io("cannot restrict", templates))?;
    // Built beside its final place, then renamed: a half-made template never matches.
    remove_abandoned(templates);
    let building = templates.join(format!(".new-{}", std::process::id()));
    let _ = fs::remove_dir_all(&building);
    fs::DirBuilder::new().mode(0o700).create(&building).map_err(io("cannot create", &building))?;
    let vm_dir = templates.join(format!("vm-{}", std::process::id()));
    let saved = save(spec, &building, &vm_dir, &key, log).await;
    let _ = fs::remove_dir_all(&vm_dir);
    let meta = match saved {
        Ok(meta) => meta,
        Err(err) => {
            let _ = fs::remove_dir_all(&building);
            return Err(err);
        }
    };
    let meta_path = building.join(META_FILE);
    let text = serde_json::to_string_pretty(&meta).expect("template metadata serializes");
    let written = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&meta_path);
    written
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        .map_err(io("cannot write", &meta_path))?;
    let dir = templates.join(&key);
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&building, &dir).map_err(io("cannot put in place", &dir))?;
    info!(log, "template saved"; "key" => &key, "dir" => %dir.display(), "boot_ms" => meta.boot_ms);
    Ok(Template { dir, meta })
}

/// Removes what a `create` killed half-way left (`.new-<pid>` and `vm-<pid>` of a pid that is
/// gone).
fn remove_abandoned(templates: &Path) {
    for entry in fs::read_dir(templates).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid =
            name.strip_prefix(".new-").or_else(|| name.strip_prefix("vm-")).and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Boots the template VM in `vm_dir` (short: it holds the VM's sockets; its name names the
/// VM's cgroup), then pauses it and writes its state into `dir`, next to its RAM.
async fn save(
    mut spec: QemuSpec,
    dir: &Path,
    vm_dir: &Path,
    key: &str,
    log: &Logger,
) -> Result<TemplateMeta, TemplateError> {
    let (memory, state) = (dir.join(MEMORY_FILE), dir.join(STATE_FILE));
    spec.template = Some(TemplateRole::Save { memory: memory.clone() });
    fs::DirBuilder::new().mode(0o700).create(vm_dir).map_err(io("cannot create", vm_dir))?;
    let log = log.new(slog::o!("template" => key.to_owned()));
    let (memory_mib, vcpus, kernel, initrd) = (spec.memory_mib, spec.vcpus, spec.kernel.clone(), spec.initrd.clone());
    let mut vm = Qemu::new(spec, VmPaths::new(vm_dir), log.clone());
    let started = Instant::now();
    let saved = async {
        let addr = vm.start().await?;
        let agent = crate::sandbox::wait_agent(&vm, &addr, Duration::from_secs(120))
            .await
            .map_err(|err| TemplateError::Boot(Box::new(err)))?;
        let boot_ms = started.elapsed().as_millis() as u64;
        drop(agent);
        tokio::time::sleep(DETACH_SETTLE).await;
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&state)
            .map_err(io("cannot create", &state))?;
        let mut qmp = vm.qmp().await?;
        qmp.execute("stop", None).await?;
        qmp.ignore_shared_memory().await?;
        qmp.send_fd("state", file.as_fd()).await?;
        drop(file);
        qmp.execute("migrate", Some(serde_json::json!({ "uri": "fd:state" }))).await?;
        qmp.wait_migration(SAVE_TIMEOUT).await?;
        Ok::<_, TemplateError>(boot_ms)
    }
    .await;
    vm.stop().await;
    let boot_ms = saved?;
    for file in [&memory, &state] {
        fs::set_permissions(file, fs::Permissions::from_mode(0o600)).map_err(io("cannot restrict", file))?;
    }
    let state_bytes = fs::metadata(&state).map_err(io("cannot read", &state))?.len();
    let created_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Ok(TemplateMeta { key: key.to_owned(), created_unix_ms, memory_mib, vcpus, kernel, initrd, boot_ms, state_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;
    use crate::config::MachineType;
    use crate::hypervisor::AgentChannel;
    use crate::hypervisor::SharedFs;

    /// A resolved VM as the shim's default configuration has it on this kind of host.
    fn spec(dir: &Path) -> QemuSpec {
        let file = |name: &str| {
            let path = dir.join(name);
            fs::write(&path, name).unwrap();
            path
        };
        QemuSpec {
            qemu: file("qemu"),
            machine: MachineType::Q35,
            kernel: file("bzImage"),
            initrd: Some(file("wisp.initrd")),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: Vec::new(),
            accel: Accel::Tcg,
            tb_size_mib: 64,
            channel: Some(AgentChannel::HybridVsock),
            vhost_vsock_fd: None,
            shared_fs: Some(SharedFs::VirtioFs),
            qmp: true,
            root_ports: 2,
            bios: None,
            debug_console: false,
            vhost_user_devices: false,
            vhost_device_vsock: "vhost-device-vsock".into(),
            virtiofsd: "virtiofsd".into(),
            extra_args: Vec::new(),
            tap_nic: None,
            confine: Default::default(),
            template: None,
            tsc_khz: None,
            max_vcpus: 16,
        }
    }

    fn save(templates: &Path, key: &str, created_unix_ms: u64) {
        let dir = templates.join(key);
        fs::create_dir_all(&dir).unwrap();
        for file in [MEMORY_FILE, STATE_FILE] {
            fs::write(dir.join(file), "x").unwrap();
        }
        let meta = TemplateMeta {
            key: key.to_owned(),
            created_unix_ms,
            memory_mib: 256,
            vcpus: 1,
            kernel: "/k".into(),
            initrd: None,
            boot_ms: 1,
            state_bytes: 1,
        };
        fs::write(dir.join(META_FILE), serde_json::to_string(&meta).unwrap()).unwrap();
    }

    #[test]
    fn a_template_is_the_vm_on_virtio_serial_and_9p_and_some_vms_cannot_be_one() {
        let dir = tempfile::tempdir().unwrap();
        let configured = spec(dir.path());
        assert!(configured.template_blocker().is_some(), "vhost-user devices do not migrate");
        let template = configured.clone().for_template();
        assert_eq!((template.channel, template.shared_fs), (Some(AgentChannel::Serial), Some(SharedFs::NineP)));
        assert_eq!(template.template_blocker(), None);
        let mut disk = template.clone();
        disk.vhost_user_devices = true;
        let mut microvm = template.clone();
        microvm.machine = MachineType::Microvm;
        let mut rootless = template.clone();
        rootless.confine.rootless = true;
        for (what, vm) in [("disk", disk), ("microvm", microvm), ("rootless", rootless)] {
            assert!(vm.template_blocker().is_some(), "{what}");
        }
    }

    #[test]
    fn the_key_follows_the_command_line_and_the_images_not_the_vm_s_own_paths() {
        let dir = tempfile::tempdir().unwrap();
        let template = spec(dir.path()).for_template();
        let key0 = key(&template);
        assert_eq!(key0.len(), 24);
        let mut placed = template.clone();
        let growth = Growth { vcpus: 1, memory_mib: 128 };
        placed.template = Some(TemplateRole::Restore { memory: "/x/memory".into(), state: "/x/state".into(), growth });
        assert_eq!(key(&placed), key0, "where a clone's files are is not what it is");
        let mut bigger = template.clone();
        bigger.memory_mib = 512;
        assert_ne!(key(&bigger), key0);
        let mut kvm = template.clone();
        kvm.accel = Accel::Kvm;
        assert_ne!(key(&kvm), key0);
        // A rebuilt initrd (same path) is another template.
        std::thread::sleep(Duration::from_millis(10));
        fs::write(template.initrd.as_ref().unwrap(), "rebuilt initrd").unwrap();
        assert_ne!(key(&template), key0);
    }

    #[test]
    fn find_matches_by_key_and_says_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let configured = spec(dir.path());
        let why = find(&configured, &templates).unwrap_err();
        assert!(why.contains("no template"), "{why}");
        let k = key(&configured.clone().for_template());
        save(&templates, &k, 1);
        let (found, growth) = find(&configured, &templates).unwrap();
        assert_eq!((found.meta.key.as_str(), growth), (k.as_str(), Growth::default()));
        assert_eq!(
            found.restore_role(growth),
            TemplateRole::Restore {
                memory: templates.join(&k).join("memory"),
                state: templates.join(&k).join("state"),
                growth,
            }
        );
        // A pod bigger than the configured VM is the same VM grown: the template serves, and
        // the clone gets the difference, its RAM in whole 128 MiB blocks.
        let mut sized = configured.clone();
        (sized.vcpus, sized.memory_mib) = (3, 256 + 200);
        let (found, growth) = find(&sized, &templates).unwrap();
        assert_eq!((found.meta.key.as_str(), growth), (k.as_str(), Growth { vcpus: 2, memory_mib: 256 }));
        // Beyond the room a template has, or smaller than it, or another VM: none serves.
        for (vcpus, memory_mib) in [(configured.max_vcpus + 1, 256), (1, TEMPLATE_MAX_MEMORY_MIB + 1), (1, 128)] {
            let mut other = configured.clone();
            (other.vcpus, other.memory_mib) = (vcpus, memory_mib);
            assert!(find(&other, &templates).unwrap_err().contains("no template"), "{vcpus} vCPUs, {memory_mib} MiB");
        }
        let mut kvm = sized.clone();
        kvm.accel = Accel::Kvm;
        assert!(find(&kvm, &templates).unwrap_err().contains("no template"));
        fs::remove_file(templates.join(&k).join(STATE_FILE)).unwrap();
        assert!(find(&configured, &templates).unwrap_err().contains("no state"));
        // A pod's NIC does not change which template stands for the VM (it is plugged later).
        let mut nic = configured;
        nic.tap_nic = Some(crate::hypervisor::qemu::config::TapNic { fd: 3, mac: "02:00:00:00:00:01".into() });
        assert_eq!(find(&nic, &templates).unwrap_err(), format!("template {k} has no state"));
    }

    #[test]
    fn list_is_oldest_first_and_remove_takes_only_a_listed_key() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "bbb", 2);
        save(dir.path(), "aaa", 3);
        fs::create_dir(dir.path().join(".ccc.123")).unwrap();
        let keys: Vec<String> = list(dir.path()).into_iter().map(|t| t.meta.key).collect();
        assert_eq!(keys, ["bbb", "aaa"], "half-made templates are not listed");
        for bad in ["", "..", ".ccc.123", "../templates", "zzz"] {
            assert!(matches!(remove(dir.path(), bad), Err(TemplateError::NotFound(_))), "{bad:?}");
        }
        remove(dir.path(), "bbb").unwrap();
        assert!(!dir.path().join("bbb").exists() && dir.path().join("aaa").exists());
        assert!(list(Path::new("/nonexistent/templates")).is_empty());
    }
}
