//! The command line: the flags, the long help (what is measured, on which clock, against which
//! goals) and the configuration names, so `--help` and the parsing live together.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

const AFTER_HELP: &str = "\
WHAT IS MEASURED
  Sizes: the agent binary, the agent-only initrd (gzip as built, plus zstd, lz4, xz and
  uncompressed variants packed here), the busybox and cloud initrds, the floors' /init and
  initrds, bzImage and vmlinux. What is packed here stays in target/bench/ (true-floor.cpio,
  floor.initrd, floor-init.sh, wisp-zstd.initrd, wisp-lz4.initrd, wisp-xz.initrd, wisp.cpio)
  to reproduce a number by hand.

  Boots, per configuration, RUNS times each, interleaved (true floor 1, busybox floor 1,
  agent 1, true floor 2, ...), all three on the same QEMU command line but for -initrd:
  TRUE FLOOR     floor-init/'s static /init (3 KiB, no libc) in a 5 KB uncompressed initrd:
                 it listens on vsock port 1024, prints its CLOCK_BOOTTIME, and echoes; the
                 host dials it as it dials the agent and times the echo of a Health.Check
                 frame, then hangs up (the floor powers off). The cost of QEMU and the kernel
                 alone, the best any /init answering on the agent's channel could do.
  BUSYBOX FLOOR  an initrd whose /init is a busybox script that mounts /proc, prints
                 /proc/uptime and powers off (1 MB gzip): kept for comparison with earlier
                 reports; its size and shell hide part of what the agent's initrd costs.
  AGENT          the wisp initrd. The host dials the agent (a new attempt every <= 100 ms, as a
         runtime polls), sends Health.Check, GetMetrics, then (every configuration but cloud)
         runs a container as the shim would: CreateSandbox with a busybox rootfs shared by
         virtio-9p, CreateContainer + StartContainer of `echo`, the first ReadStdout, the
         output drained + WaitProcess, RemoveContainer; then DestroySandbox and waits for
         QEMU to exit. Phases (host clock): QEMU spawn -> kernel start (before printk 0) ->
         /init entered (console: Run /init) -> agent ready (first Check) -> container started
         -> first output -> container exit -> VM gone (qemu exit).

CLOCKS (the table's clock column)
  printk  guest kernel stamps, e.g. `[    1.781430] Run /init as init process`
  boot    guest CLOCK_BOOTTIME: the agent's `t=`/`boot_clock=`, the floor's /proc/uptime
          (10 ms steps). The printk clock runs a constant 30-55 ms ahead of it under TCG here
          (the kernel prints the offset in `sched_clock: Marking stable`); rows that mix the
          two (p-boot) convert printk to CLOCK_BOOTTIME first.
  host    the host's monotonic clock, seconds since QEMU was spawned (vhost-device-vsock is
          started before). `console:` rows are when a line first appeared in the console
          file (polled every 5 ms); `before printk 0` is such a host time minus the printk
          stamp of the same line: QEMU start-up, firmware and kernel decompression.

GOALS (printed under each configuration)
  first Check answered / true floor's echo, host clock since QEMU's spawn, <= 1.03: the
  ratio of medians decides (also shown: of minimums). The guest clock cannot decide it: it
  starts after QEMU loaded the initrd and the kernel was decompressed, and a bigger initrd
  costs there. The guest-clock ratio (agent ready / true floor listening) is shown beside
  it, with `/init part only`: the floor's median plus the agent's extra time after the
  kernel ran /init, over the floor's median, which cancels the kernel-phase noise a loaded
  host adds. The same ratios against the busybox floor follow in parentheses. Agent RSS:
  <= 2 MiB goal, <= 3 MiB target.

MEMORY
  Agent RSS, threads and guest memory come from the agent's GetMetrics (Prometheus text),
  read after the first Check; `n/a` when the agent does not implement it. QEMU's VmRSS (and
  the part that is guest RAM in the shared memfd, RssShmem) and vhost-device-vsock's VmRSS
  are read from /proc at the same moment, QEMU's PSS from /proc/PID/smaps_rollup. Shim RSS
  is not measured here: the bench drives the agent directly, as the shim does, without it
  (docs/shim.md has the shim's RSS/PSS).

OUTPUT
  A table on stdout (median [min..max] per phase, the agent's ratio of medians to each
  floor, the goals), progress on stderr (a bar on a terminal), JSON in target/bench/boot.json (see
  --json) and an SVG chart in target/bench/boot.svg (stacked bars of the host-clock phase
  medians, floor and agent per configuration; see --svg). Exit status 1
  if any run failed (its console tail is printed, the other runs go on); 2 on bad usage or
  missing artifacts (run `make`).

CONFIGURATIONS
  q35             q35 + qboot, our bzImage, hybrid vsock (vhost-device-vsock), 256 MiB, and
                  make's agent-only initrd (uncompressed, as every configuration but those below)
  pc              as q35 on the pc (i440fx) machine
  q35-virtio-fs   as q35 with the container rootfs on virtio-fs (a virtiofsd per boot)
  microvm-virtio-fs as microvm with virtio-fs (vhost-user-fs-device)
  microvm         microvm, our PVH vmlinux, hybrid vsock, 256 MiB
  q35-serial      as q35 but the agent channel is virtio-serial
  microvm-serial  as microvm but over virtio-serial
  q35-gzip        as q35 with the agent-only initrd compressed with gzip -9
  q35-zstd        as q35 with it compressed with zstd -19
  q35-lz4         as q35 with it compressed with lz4 (legacy frame, lz4 -l -9)
  q35-xz          as q35 with it compressed with xz (crc32, 1 MiB dictionary)
  cloud           q35, Debian's cloud kernel (/boot/vmlinuz-*-cloud-amd64) with
                  target/initrd/wisp-cloud.initrd (virtio modules loaded by the agent), 512 MiB
                  (no true floor: it loads no modules, so it cannot listen on vsock there)

  Every configuration but cloud and the -virtio-fs ones shares the container rootfs by
  virtio-9p; the floor VMs get the same share device (unused).

  The default (q35, microvm, cloud; 5 runs) boots 45 VMs in about 4 minutes under TCG on
  2 cores; --all boots 180 in about 12; --quick (q35 and microvm, 2 runs) 12 in about a minute.
  Run it on an otherwise idle host: other VMs and builds slow a TCG guest down by tens of
  percent.";

#[derive(Debug, Parser)]
#[command(
    name = "wisp-bench-boot",
    version,
    about = "Measure wisp's sizes, boot time against the true and busybox floors, and idle memory",
    after_long_help = AFTER_HELP
)]
pub struct Args {
    /// Boots per configuration, for each floor and for the agent each
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,

    /// Configurations to boot (comma-separated or repeated); see CONFIGURATIONS below
    #[arg(long = "config", value_enum, value_delimiter = ',', default_values_t = [ConfigName::Q35, ConfigName::Microvm, ConfigName::Cloud])]
    pub configs: Vec<ConfigName>,

    /// Boot every configuration
    #[arg(long, conflicts_with = "configs")]
    pub all: bool,

    /// A small run: q35 and microvm, 2 runs each (overrides --runs and --config)
    #[arg(long, conflicts_with = "all")]
    pub quick: bool,

    /// Where to write the SVG chart [default: target/bench/boot.svg in the workspace]
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Only report the sizes; boot nothing
    #[arg(long)]
    pub sizes_only: bool,

    /// Where to write the JSON report [default: target/bench/boot.json in the workspace]
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Seconds one boot may take, from QEMU's spawn to its exit, before the run fails
    #[arg(long, value_name = "SECS", default_value_t = 90)]
    pub timeout: u64,

    /// Save every run's guest console into DIR (CONFIG-KIND-RUN.log)
    #[arg(long, value_name = "DIR")]
    pub keep_consoles: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ConfigName {
    Q35,
    Pc,
    Microvm,
    Q35Serial,
    MicrovmSerial,
    Q35Zstd,
    Q35Lz4,
    Q35Xz,
    Q35Gzip,
    Q35VirtioFs,
    MicrovmVirtioFs,
    Cloud,
}

impl ConfigName {
    pub fn name(self) -> &'static str {
        match self {
            Self::Q35 => "q35",
            Self::Pc => "pc",
            Self::Microvm => "microvm",
            Self::Q35Serial => "q35-serial",
            Self::MicrovmSerial => "microvm-serial",
            Self::Q35Zstd => "q35-zstd",
            Self::Q35Lz4 => "q35-lz4",
            Self::Q35Xz => "q35-xz",
            Self::Q35Gzip => "q35-gzip",
            Self::Q35VirtioFs => "q35-virtio-fs",
            Self::MicrovmVirtioFs => "microvm-virtio-fs",
            Self::Cloud => "cloud",
        }
    }
}

impl Args {
    /// Boots per configuration and kind: 2 with `--quick`, else `--runs`.
    pub fn effective_runs(&self) -> u32 {
        if self.quick {
            2
        } else {
            self.runs
        }
    }
}

/// The configurations asked for, each once, in the order given.
pub fn selected(args: &Args) -> Vec<ConfigName> {
    if args.quick {
        return vec![ConfigName::Q35, ConfigName::Microvm];
    }
    if args.all {
        return ConfigName::value_variants().to_vec();
    }
    let mut names: Vec<ConfigName> = Vec::new();
    for name in &args.configs {
        if !names.contains(name) {
            names.push(*name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_deduplicated_in_order_and_all_means_all() {
        let args = Args::try_parse_from(["x", "--config", "cloud,q35", "--config", "cloud"]).unwrap();
        assert_eq!(selected(&args), [ConfigName::Cloud, ConfigName::Q35]);
        let args = Args::try_parse_from(["x", "--all"]).unwrap();
        assert_eq!(selected(&args).len(), 12);
        let args = Args::try_parse_from(["x", "--quick"]).unwrap();
        assert_eq!(selected(&args), [ConfigName::Q35, ConfigName::Microvm]);
        assert_eq!(args.effective_runs(), 2);
    }

    #[test]
    fn cli_parses_configs_and_defaults() {
        let args = Args::try_parse_from(["wisp-bench-boot"]).unwrap();
        assert_eq!(args.configs, [ConfigName::Q35, ConfigName::Microvm, ConfigName::Cloud]);
        assert_eq!(args.runs, 5);
        let args = Args::try_parse_from(["x", "--config", "q35-serial,cloud", "--runs", "2"]).unwrap();
        assert_eq!(args.configs, [ConfigName::Q35Serial, ConfigName::Cloud]);
        assert!(Args::try_parse_from(["x", "--runs", "0"]).is_err());
        assert!(Args::try_parse_from(["x", "--all", "--config", "q35"]).is_err());
    }
}
