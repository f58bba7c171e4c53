//! `wisp block-volume hot-plug|hot-unplug`: a disk into (and out of) a RUNNING container
//! (seed 004), through the sandbox shim's side API ([`wisp_shim::api`]).

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use wisp_shim::api::{self, Request};
use wisp_shim::sandbox::state_root;
use wisp_shim::state::{locate, ProcFs};

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Plug a raw image, host block device or vhost-user-blk socket into a running container.
    HotPlug {
        /// The sandbox id (with `ctr run`, the container id), or NAMESPACE/ID when several
        /// containerd namespaces run that id.
        #[arg(long)]
        sandbox: String,
        /// The container id.
        #[arg(long)]
        container: String,
        /// The image, block device or vhost-user-blk socket on the host.
        #[arg(long)]
        block_volume: String,
        /// The device node to create in the container (`/dev/xvdb`).
        #[arg(long)]
        device_path: String,
        /// Mount it there in the container.
        #[arg(long)]
        mount: Option<String>,
        /// The file system type for --mount.
        #[arg(long, default_value = "ext4")]
        fstype: String,
        /// Mount options (comma separated).
        #[arg(long, default_value = "")]
        options: String,
    },
    /// Unmount, remove the node and unplug the disk again.
    HotUnplug {
        /// The sandbox id, or NAMESPACE/ID.
        #[arg(long)]
        sandbox: String,
        /// The container id.
        #[arg(long)]
        container: String,
        /// The device node given at hot-plug.
        #[arg(long)]
        device_path: String,
    },
}

/// Runs `cmd`.
pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    let (sandbox, request) = match cmd {
        Cmd::HotPlug { sandbox, container, block_volume, device_path, mount, fstype, options } => {
            let block_volume = std::path::absolute(Path::new(&block_volume))
                .with_context(|| format!("block volume {block_volume}"))?
                .to_string_lossy()
                .into_owned();
            let options = options.split(',').filter(|o| !o.is_empty()).map(str::to_owned).collect();
            let mount = mount.unwrap_or_default();
            (sandbox, Request::BlockHotPlug { container, block_volume, device_path, mount, fstype, options })
        }
        Cmd::HotUnplug { sandbox, container, device_path } => {
            (sandbox, Request::BlockHotUnplug { container, device_path })
        }
    };
    let socket = api::socket_path(&locate(&state_root(), &sandbox, &ProcFs)?);
    let data = api::call(&socket, &request).with_context(|| format!("sandbox {sandbox}"))?;
    println!("{data}");
    Ok(())
}
