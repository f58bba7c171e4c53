//! `wisp direct-volume add|remove|stats|resize|list`: kata-ctl's direct-volume commands on the
//! same layout ([`wisp_shim::volumes::direct`]), plus `list`, which kata-ctl lacks.
//!
//! `stats` and `resize` find the sandbox using the volume (the file named after its id in the
//! volume's directory) and ask its shim over the side API ([`wisp_shim::api`]), which asks
//! the agent (GetVolumeStats, ResizeVolume).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use wisp_shim::api::{self, Request};
use wisp_shim::config::Config;
use wisp_shim::sandbox::state_root;
use wisp_shim::state::{locate, ProcFs};
use wisp_shim::volumes::direct;

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Record a direct volume: its mountInfo JSON under the volume path's directory.
    Add {
        /// The volume path (what `ctr run --mount src=` names).
        #[arg(long)]
        volume_path: String,
        /// The mountInfo JSON (`volume-type`, `device`, `fstype`, `metadata`, `options`).
        #[arg(long)]
        mount_info: String,
    },
    /// Forget a direct volume.
    Remove {
        /// The volume path.
        #[arg(long)]
        volume_path: String,
    },
    /// File system stats of a volume in use, from the guest.
    Stats {
        /// The volume path.
        #[arg(long)]
        volume_path: String,
    },
    /// Grow a volume in use (its disk and its ext4 file system) to SIZE bytes.
    Resize {
        /// The volume path.
        #[arg(long)]
        volume_path: String,
        /// The new size in bytes.
        #[arg(long)]
        size: u64,
    },
    /// Every recorded volume, its mountInfo and the sandboxes using it.
    List,
}

/// Runs `cmd` against `config`'s direct-volume root.
pub fn run(cmd: Cmd, config: &Config) -> anyhow::Result<()> {
    let root = direct::root(config);
    match cmd {
        Cmd::Add { volume_path, mount_info } => {
            direct::check_path(&volume_path)?;
            let info = direct::parse(&volume_path, mount_info.as_bytes(), &PathBuf::from("--mount-info"))?;
            let file = direct::add(&root, &volume_path, &info)?;
            println!("{}", file.display());
        }
        Cmd::Remove { volume_path } => direct::remove(&root, &volume_path)?,
        Cmd::Stats { volume_path } => {
            let data = ask(&root, &volume_path, &Request::VolumeStats { volume: volume_path.clone() })?;
            println!("{}", serde_json::to_string_pretty(&data)?);
        }
        Cmd::Resize { volume_path, size } => {
            ask(&root, &volume_path, &Request::VolumeResize { volume: volume_path.clone(), size })?;
        }
        Cmd::List => {
            for (volume, info) in direct::list(&root) {
                let users = direct::sandboxes(&root, &volume).unwrap_or_default().join(",");
                match info {
                    Ok(info) => println!(
                        "{volume}\t{}\t{}\t{}\t{}",
                        info.volume_type,
                        info.device,
                        info.fstype,
                        if users.is_empty() { "-" } else { &users }
                    ),
                    Err(err) => println!("{volume}\tunreadable: {}", wisp_shim::error_chain(&err)),
                }
            }
        }
    }
    Ok(())
}

/// Sends `request` to the shim of the sandbox using `volume`.
fn ask(root: &std::path::Path, volume: &str, request: &Request) -> anyhow::Result<serde_json::Value> {
    direct::read(root, volume)?;
    let sandboxes = direct::sandboxes(root, volume)?;
    let Some(sandbox) = sandboxes.first() else {
        bail!("volume {volume} is not used by a running sandbox");
    };
    let socket = api::socket_path(&locate(&state_root(), sandbox, &ProcFs)?);
    api::call(&socket, request).with_context(|| format!("sandbox {sandbox}"))
}
