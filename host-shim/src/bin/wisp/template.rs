//! `wisp template create|list|remove`: the VM templates sandboxes are cloned from when the
//! configuration says `[factory] template = true` ([`wisp_shim::template`]).

use std::path::Path;

use anyhow::Context as _;
use clap::Subcommand;
use wisp_shim::config::Config;
use wisp_shim::hypervisor::qemu::config::QemuSpec;
use wisp_shim::sandbox::state_root;
use wisp_shim::template;

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Boot the configured VM to agent-ready and save it as a template (its RAM in a file on
    /// the state root's tmpfs, about what the guest touched; its device state, a few hundred
    /// KiB). A template of the same key is replaced.
    Create,
    /// List the templates and say which one the configuration would clone.
    List,
    /// Remove a template (a key from `list`), or every one with --all.
    Remove {
        /// The template's key.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        key: Option<String>,
        /// Remove every template.
        #[arg(long)]
        all: bool,
    },
}

/// Runs `cmd` against `config`.
pub fn run(cmd: Cmd, config: &Config) -> anyhow::Result<()> {
    let root = state_root();
    let templates = template::templates_dir(config, &root);
    match cmd {
        Cmd::Create => create(config, &root, &templates),
        Cmd::List => {
            list(config, &root, &templates);
            Ok(())
        }
        Cmd::Remove { key: Some(key), .. } => {
            template::remove(&templates, &key).with_context(|| format!("cannot remove template {key}"))?;
            println!("removed template {key}");
            Ok(())
        }
        Cmd::Remove { key: None, .. } => {
            for found in template::list(&templates) {
                template::remove(&templates, &found.meta.key)?;
                println!("removed template {}", found.meta.key);
            }
            Ok(())
        }
    }
}

fn create(config: &Config, root: &Path, templates: &Path) -> anyhow::Result<()> {
    if !config.factory.template {
        eprintln!(
            "note: {} does not set [factory] template = true: sandboxes will not use the template",
            config.source_name()
        );
    }
    eprintln!("booting the template VM (the configured one, agent on virtio-serial, share over 9p) ...");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let made = runtime
        .block_on(template::create(config, root, templates, &log))
        .map_err(|err| anyhow::anyhow!(wisp_shim::error_chain(&err)))?;
    let meta = &made.meta;
    println!(
        "template {} saved in {}: agent ready {} ms after QEMU started, device state {} KiB, RAM file {} MiB",
        meta.key,
        made.dir.display(),
        meta.boot_ms,
        meta.state_bytes / 1024,
        allocated_mib(&made.dir.join(template::MEMORY_FILE)),
    );
    Ok(())
}

fn list(config: &Config, root: &Path, templates: &Path) {
    let found = template::list(templates);
    if found.is_empty() {
        println!("no templates in {}", templates.display());
    }
    for t in &found {
        let m = &t.meta;
        println!(
            "{}  {} MiB RAM ({} MiB in the file), {} vCPU, kernel {}, agent ready {} ms after QEMU started",
            m.key,
            m.memory_mib,
            allocated_mib(&t.dir.join(template::MEMORY_FILE)),
            m.vcpus,
            m.kernel.display(),
            m.boot_ms
        );
    }
    let which = QemuSpec::resolve(config, root, false)
        .map_err(|err| wisp_shim::error_chain(&err))
        .and_then(|spec| template::find(&spec, templates));
    let enabled = if config.factory.template { "on" } else { "off ([factory] template = false)" };
    match which {
        Ok((t, _)) => println!("this configuration clones {} (templating {enabled})", t.meta.key),
        Err(why) => println!("this configuration boots cold: {why} (templating {enabled})"),
    }
}

/// The file's allocated size (the RAM file is sparse: only what the guest touched).
fn allocated_mib(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512 / (1 << 20))
}
