//! `wisp direct-volume add|remove|stats|resize|list`: kata-ctl's direct-volume commands on the
//! same layout ([`wisp_shim::volumes::direct`]), plus `list`, which kata-ctl lacks.
//!
//! The arguments are kata-ctl's, positional (`add VOLUME_PATH MOUNT_INFO`, `remove|stats
//! VOLUME_PATH`, `resize VOLUME_PATH SIZE`: what the seeds and Kata's docs type), or wisp's
//! earlier flags (`--volume-path`, `--mount-info`, `--size`), which keep working. Each value is
//! given one way: both ways, or neither, is refused naming the two spellings ([`ArgError`]).
//! Positions are kata-ctl's: a flag does not shift them (`add --volume-path P JSON` gives JSON
//! as VOLUME_PATH, which is refused as given twice).
//!
//! `stats` and `resize` find the sandbox using the volume (the file named after its id in the
//! volume's directory) and ask its shim over the side API ([`wisp_shim::api`]), which asks
//! the agent (GetVolumeStats, ResizeVolume).

use std::path::{Path, PathBuf};

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
    ///
    /// Example (kata-ctl's form): wisp direct-volume add /kubelet/kata-test-vol-001/volume001
    /// '{"volume-type":"directvol","device":"/dev/sdb","fstype":"ext4","metadata":{},"options":[]}'
    #[command(override_usage = "wisp direct-volume add VOLUME_PATH MOUNT_INFO\n       \
                                wisp direct-volume add --volume-path VOLUME_PATH --mount-info MOUNT_INFO")]
    Add {
        /// The volume path (what `ctr run --mount src=` names).
        #[arg(value_name = "VOLUME_PATH")]
        path: Option<String>,
        /// The mountInfo JSON (`volume-type`, `device`, `fstype`, `metadata`, `options`).
        #[arg(value_name = "MOUNT_INFO")]
        info: Option<String>,
        /// VOLUME_PATH as a flag, instead of the first argument.
        #[arg(long, value_name = "VOLUME_PATH")]
        volume_path: Option<String>,
        /// MOUNT_INFO as a flag, instead of the second argument.
        #[arg(long, value_name = "MOUNT_INFO")]
        mount_info: Option<String>,
    },
    /// Forget a direct volume.
    #[command(override_usage = "wisp direct-volume remove VOLUME_PATH | --volume-path VOLUME_PATH")]
    Remove {
        /// The volume path.
        #[arg(value_name = "VOLUME_PATH")]
        path: Option<String>,
        /// VOLUME_PATH as a flag, instead of the argument.
        #[arg(long, value_name = "VOLUME_PATH")]
        volume_path: Option<String>,
    },
    /// File system stats of a volume in use, from the guest.
    #[command(override_usage = "wisp direct-volume stats VOLUME_PATH | --volume-path VOLUME_PATH")]
    Stats {
        /// The volume path.
        #[arg(value_name = "VOLUME_PATH")]
        path: Option<String>,
        /// VOLUME_PATH as a flag, instead of the argument.
        #[arg(long, value_name = "VOLUME_PATH")]
        volume_path: Option<String>,
    },
    /// Grow a volume in use (its disk and its ext4 file system) to SIZE bytes.
    #[command(override_usage = "wisp direct-volume resize VOLUME_PATH SIZE\n       \
                                wisp direct-volume resize --volume-path VOLUME_PATH --size SIZE")]
    Resize {
        /// The volume path.
        #[arg(value_name = "VOLUME_PATH")]
        path: Option<String>,
        /// The new size in bytes.
        #[arg(value_name = "SIZE")]
        bytes: Option<u64>,
        /// VOLUME_PATH as a flag, instead of the first argument.
        #[arg(long, value_name = "VOLUME_PATH")]
        volume_path: Option<String>,
        /// SIZE as a flag, instead of the second argument.
        #[arg(long, value_name = "SIZE")]
        size: Option<u64>,
    },
    /// Every recorded volume, its mountInfo and the sandboxes using it.
    List,
}

/// A value given both as an argument and as a flag, or not at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("{name} given twice: as argument {position} ({positional:?}) and as {flag} ({flagged:?}); give it once (kata-ctl's form: `{usage}`)")]
    Both {
        name: &'static str,
        position: usize,
        positional: String,
        flag: &'static str,
        flagged: String,
        usage: &'static str,
    },
    #[error("{name} missing: give it as argument {position} (kata-ctl's form: `{usage}`) or as {flag}")]
    Neither { name: &'static str, position: usize, flag: &'static str, usage: &'static str },
}

/// One value of a subcommand: which argument it is and its flag.
#[derive(Debug, Clone, Copy)]
struct Slot {
    name: &'static str,
    position: usize,
    flag: &'static str,
    usage: &'static str,
}

impl Slot {
    /// The value, from exactly one of its two spellings.
    fn pick<T: ToString>(self, positional: Option<T>, flagged: Option<T>) -> Result<T, ArgError> {
        match (positional, flagged) {
            (Some(value), None) | (None, Some(value)) => Ok(value),
            (Some(positional), Some(flagged)) => Err(ArgError::Both {
                name: self.name,
                position: self.position,
                positional: positional.to_string(),
                flag: self.flag,
                flagged: flagged.to_string(),
                usage: self.usage,
            }),
            (None, None) => {
                Err(ArgError::Neither { name: self.name, position: self.position, flag: self.flag, usage: self.usage })
            }
        }
    }
}

/// What a subcommand does, once its values are picked.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Add { volume: String, mount_info: String },
    Remove { volume: String },
    Stats { volume: String },
    Resize { volume: String, size: u64 },
    List,
}

/// The volume path of the subcommand whose kata-ctl usage is `usage`.
fn volume_slot(usage: &'static str) -> Slot {
    Slot { name: "VOLUME_PATH", position: 1, flag: "--volume-path", usage }
}

/// VOLUME_PATH and the second value `(name, flag)` of the subcommand whose kata-ctl usage is
/// `usage`, each given as (argument, flag).
fn volume_and<T: ToString>(
    usage: &'static str,
    (name, flag): (&'static str, &'static str),
    volume: (Option<String>, Option<String>),
    value: (Option<T>, Option<T>),
) -> Result<(String, T), ArgError> {
    let second = Slot { name, position: 2, flag, usage };
    Ok((volume_slot(usage).pick(volume.0, volume.1)?, second.pick(value.0, value.1)?))
}

impl Cmd {
    /// Picks each value from its argument or its flag.
    fn action(self) -> Result<Action, ArgError> {
        Ok(match self {
            Self::Add { path, info, volume_path, mount_info } => {
                let usage = "wisp direct-volume add VOLUME_PATH MOUNT_INFO";
                let (volume, mount_info) =
                    volume_and(usage, ("MOUNT_INFO", "--mount-info"), (path, volume_path), (info, mount_info))?;
                Action::Add { volume, mount_info }
            }
            Self::Remove { path, volume_path } => {
                Action::Remove { volume: volume_slot("wisp direct-volume remove VOLUME_PATH").pick(path, volume_path)? }
            }
            Self::Stats { path, volume_path } => {
                Action::Stats { volume: volume_slot("wisp direct-volume stats VOLUME_PATH").pick(path, volume_path)? }
            }
            Self::Resize { path, bytes, volume_path, size } => {
                let usage = "wisp direct-volume resize VOLUME_PATH SIZE";
                let (volume, size) = volume_and(usage, ("SIZE", "--size"), (path, volume_path), (bytes, size))?;
                Action::Resize { volume, size }
            }
            Self::List => Action::List,
        })
    }
}

/// Runs `cmd` against `config`'s direct-volume root.
pub fn run(cmd: Cmd, config: &Config) -> anyhow::Result<()> {
    run_in(cmd, &direct::root(config))
}

/// Runs `cmd` against the direct-volume root `root`.
fn run_in(cmd: Cmd, root: &Path) -> anyhow::Result<()> {
    match cmd.action()? {
        Action::Add { volume, mount_info } => {
            direct::check_path(&volume)?;
            let info = direct::parse(&volume, mount_info.as_bytes(), &PathBuf::from("MOUNT_INFO"))?;
            let file = direct::add(root, &volume, &info)?;
            println!("{}", file.display());
        }
        Action::Remove { volume } => direct::remove(root, &volume)?,
        Action::Stats { volume } => {
            let data = ask(root, &volume, &Request::VolumeStats { volume: volume.clone() })?;
            println!("{}", serde_json::to_string_pretty(&data)?);
        }
        Action::Resize { volume, size } => {
            ask(root, &volume, &Request::VolumeResize { volume: volume.clone(), size })?;
        }
        Action::List => {
            for (volume, info) in direct::list(root) {
                let users = direct::sandboxes(root, &volume).unwrap_or_default().join(",");
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
fn ask(root: &Path, volume: &str, request: &Request) -> anyhow::Result<serde_json::Value> {
    direct::read(root, volume)?;
    let sandboxes = direct::sandboxes(root, volume)?;
    let Some(sandbox) = sandboxes.first() else {
        bail!("volume {volume} is not used by a running sandbox");
    };
    let socket = api::socket_path(&locate(&state_root(), sandbox, &ProcFs)?);
    api::call(&socket, request).with_context(|| format!("sandbox {sandbox}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `wisp direct-volume` alone, to parse its subcommands as the binary does.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    fn action(args: &[&str]) -> Result<Action, ArgError> {
        let cli = Cli::try_parse_from(std::iter::once("direct-volume").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        cli.cmd.action()
    }

    const VOLUME: &str = "/kubelet/kata-test-vol-001/volume001";
    const INFO: &str = r#"{"volume-type":"directvol","device":"/dev/sdb","fstype":"ext4","metadata":{},"options":[]}"#;

    #[test]
    fn kata_ctl_positional_arguments() {
        let add = Action::Add { volume: VOLUME.into(), mount_info: INFO.into() };
        assert_eq!(action(&["add", VOLUME, INFO]), Ok(add));
        assert_eq!(action(&["remove", VOLUME]), Ok(Action::Remove { volume: VOLUME.into() }));
        assert_eq!(action(&["stats", VOLUME]), Ok(Action::Stats { volume: VOLUME.into() }));
        assert_eq!(
            action(&["resize", VOLUME, "33554432"]),
            Ok(Action::Resize { volume: VOLUME.into(), size: 32 << 20 })
        );
        assert_eq!(action(&["list"]), Ok(Action::List));
    }

    #[test]
    fn the_flags_keep_working_and_mix_with_arguments() {
        let add = Action::Add { volume: VOLUME.into(), mount_info: INFO.into() };
        assert_eq!(action(&["add", "--volume-path", VOLUME, "--mount-info", INFO]), Ok(add));
        let add = Action::Add { volume: VOLUME.into(), mount_info: INFO.into() };
        assert_eq!(action(&["add", VOLUME, "--mount-info", INFO]), Ok(add), "argument 1 and the second's flag");
        assert_eq!(action(&["remove", "--volume-path", VOLUME]), Ok(Action::Remove { volume: VOLUME.into() }));
        assert_eq!(action(&["stats", "--volume-path", VOLUME]), Ok(Action::Stats { volume: VOLUME.into() }));
        let resize = Action::Resize { volume: VOLUME.into(), size: 7 };
        assert_eq!(action(&["resize", "--volume-path", VOLUME, "--size", "7"]), Ok(resize));
        assert_eq!(action(&["resize", VOLUME, "--size", "7"]), Ok(Action::Resize { volume: VOLUME.into(), size: 7 }));
    }

    #[test]
    fn a_value_given_both_ways_is_refused() {
        let err = action(&["add", VOLUME, INFO, "--volume-path", "/other"]).unwrap_err();
        assert!(matches!(err, ArgError::Both { name: "VOLUME_PATH", position: 1, .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(VOLUME) && text.contains("/other") && text.contains("--volume-path"), "{text}");
        // Positions are kata-ctl's: a flag does not shift the arguments after it.
        let err = action(&["add", "--volume-path", VOLUME, INFO]).unwrap_err();
        assert!(matches!(err, ArgError::Both { name: "VOLUME_PATH", .. }), "{err:?}");
        let err = action(&["resize", VOLUME, "9", "--size", "7"]).unwrap_err();
        assert!(matches!(err, ArgError::Both { name: "SIZE", position: 2, .. }), "{err:?}");
        for sub in ["remove", "stats"] {
            let err = action(&[sub, VOLUME, "--volume-path", VOLUME]).unwrap_err();
            assert!(matches!(err, ArgError::Both { name: "VOLUME_PATH", .. }), "{sub}: {err:?}");
        }
    }

    #[test]
    fn a_value_given_neither_way_is_refused_naming_both_spellings() {
        let err = action(&["add", VOLUME]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MOUNT_INFO missing: give it as argument 2 (kata-ctl's form: \
             `wisp direct-volume add VOLUME_PATH MOUNT_INFO`) or as --mount-info"
        );
        for sub in ["add", "remove", "stats", "resize"] {
            let err = action(&[sub]).unwrap_err();
            assert!(
                matches!(err, ArgError::Neither { name: "VOLUME_PATH", flag: "--volume-path", .. }),
                "{sub}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("wisp direct-volume {sub} VOLUME_PATH")), "{err}");
        }
        let err = action(&["resize", VOLUME]).unwrap_err();
        assert!(matches!(err, ArgError::Neither { name: "SIZE", flag: "--size", .. }), "{err:?}");
    }

    #[test]
    fn clap_still_refuses_what_is_not_a_size_or_one_argument_too_many() {
        for args in [&["resize", VOLUME, "big"][..], &["remove", VOLUME, "extra"], &["add", VOLUME, INFO, "extra"]] {
            let args = std::iter::once("direct-volume").chain(args.iter().copied());
            assert!(Cli::try_parse_from(args).is_err());
        }
    }

    #[test]
    fn add_list_and_remove_with_kata_ctl_arguments() {
        let root = tempfile::tempdir().unwrap();
        let cmd = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("direct-volume").chain(args.iter().copied())).unwrap().cmd
        };
        run_in(cmd(&["add", VOLUME, INFO]), root.path()).unwrap();
        let listed = direct::list(root.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, VOLUME);
        assert_eq!(listed[0].1.as_ref().unwrap().device, "/dev/sdb");
        let err = run_in(cmd(&["stats", VOLUME]), root.path()).unwrap_err();
        assert!(format!("{err:#}").contains("not used by a running sandbox"), "{err:#}");
        let err = run_in(cmd(&["add", VOLUME, "not json"]), root.path()).unwrap_err();
        assert!(format!("{err:#}").contains("MOUNT_INFO"), "the message names the argument: {err:#}");
        run_in(cmd(&["remove", VOLUME]), root.path()).unwrap();
        assert!(direct::list(root.path()).is_empty());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "the volume's directory is gone");
    }
}
