//! One boot of a floor or an agent VM and the values it yields: the guest's timeline from the
//! console, the host's times from the console watcher and the host's session (the agent's RPCs,
//! the true floor's echo).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wisp_tests::timeline::{BootTimeline, FLOOR_MARKER, KERNEL_RUN_INIT};
use wisp_tests::{Vm, VmConfig};

use crate::agent_session::agent_session;
use crate::console_watch::ConsoleWatcher;
use crate::container::Share;
use crate::echo_session::echo_session;
use crate::metrics::{key, Sample};

/// Which initrd a run boots: one of the floors or the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `floor-init/`'s echoing `/init` alone (`wisp_tests::floor::true_floor_initrd`).
    TrueFloor,
    /// The busybox script that prints its uptime (`wisp_tests::floor::FLOOR_INIT`).
    BusyboxFloor,
    Agent,
}

impl Kind {
    /// Every kind, in the order each run boots them.
    pub const ALL: [Kind; 3] = [Kind::TrueFloor, Kind::BusyboxFloor, Kind::Agent];

    pub fn name(self) -> &'static str {
        match self {
            Self::TrueFloor => "true-floor",
            Self::BusyboxFloor => "busybox-floor",
            Self::Agent => "agent",
        }
    }
}

/// What a run measured: its values, the raw GetMetrics samples (agent runs) and notes on anything
/// unusual.
pub type Measured = (Sample, BTreeMap<String, f64>, Vec<String>);

/// What a run produced: its numbers, or the error; and the console either way.
pub struct Outcome {
    pub result: Result<Measured>,
    pub console: Option<String>,
    pub command_line: Option<String>,
}

/// Boots the true floor: dials it, times its echo of a Health.Check, hangs up (it powers off)
/// and waits for QEMU's exit.
pub fn true_floor_run(config: VmConfig, timeout: Duration) -> Outcome {
    let mut vm = match Vm::boot(config) {
        Ok(vm) => vm,
        Err(err) => return Outcome { result: Err(err.into()), console: None, command_line: None },
    };
    let watcher = ConsoleWatcher::start(&vm, &[KERNEL_RUN_INIT, FLOOR_MARKER]);
    let result = echo_session(&mut vm, timeout);
    let seen = watcher.finish();
    let console = vm.console();
    let result = result.and_then(|mut values| {
        let timeline = BootTimeline::parse(&console);
        values.insert(key::GUEST_READY, timeline.floor_uptime.context("no WISP-FLOOR line on the console")?);
        if let Some(at) = seen.get(FLOOR_MARKER) {
            values.insert(key::HOST_READY_SEEN, at.as_secs_f64());
        }
        insert_run_init(&mut values, &timeline, &seen);
        Ok((values, BTreeMap::new(), Vec::new()))
    });
    Outcome { result, console: Some(console), command_line: Some(vm.qemu_command_line()) }
}

/// Boots the busybox floor: waits for QEMU to exit by itself.
pub fn busybox_floor_run(config: VmConfig, timeout: Duration) -> Outcome {
    let mut vm = match Vm::boot(config) {
        Ok(vm) => vm,
        Err(err) => return Outcome { result: Err(err.into()), console: None, command_line: None },
    };
    let watcher = ConsoleWatcher::start(&vm, &[KERNEL_RUN_INIT, FLOOR_MARKER]);
    let exit = vm.wait_exit(timeout);
    let exited = vm.spawned_at().elapsed();
    let seen = watcher.finish();
    let console = vm.console();
    let result = (|| {
        let status = exit?;
        ensure!(status.success(), "qemu exited with {status}; its output:\n{}", vm.qemu_log());
        let timeline = BootTimeline::parse(&console);
        let mut values = Sample::new();
        values.insert(key::HOST_EXIT, exited.as_secs_f64());
        values.insert(key::GUEST_READY, timeline.floor_uptime.context("no WISP-FLOOR line on the console")?);
        let floor_seen = seen.get(FLOOR_MARKER).context("the WISP-FLOOR line was not seen while qemu ran")?;
        values.insert(key::HOST_READY_SEEN, floor_seen.as_secs_f64());
        values.insert(key::HOST_SERVING, floor_seen.as_secs_f64());
        insert_run_init(&mut values, &timeline, &seen);
        Ok((values, BTreeMap::new(), Vec::new()))
    })();
    Outcome { result, console: Some(console), command_line: Some(vm.qemu_command_line()) }
}

/// Boots the agent, talks to it (runs a container in it with `container`), destroys the sandbox
/// and waits for QEMU to exit.
pub fn agent_run(config: VmConfig, timeout: Duration, container: Option<Share>) -> Outcome {
    let mut vm = match Vm::boot(config) {
        Ok(vm) => vm,
        Err(err) => return Outcome { result: Err(err.into()), console: None, command_line: None },
    };
    let watcher = ConsoleWatcher::start(&vm, &[KERNEL_RUN_INIT, "msg=\"agent ready\""]);
    let result = agent_session(&mut vm, timeout, container);
    let seen = watcher.finish();
    let console = vm.console();
    let result = result.map(|(mut values, metrics, notes)| {
        let timeline = BootTimeline::parse(&console);
        let guest = [
            (key::GUEST_MAIN, timeline.init_process_start),
            (key::GUEST_INIT_STARTED, timeline.init_started),
            (key::GUEST_MODULES, timeline.modules_loaded),
            (key::GUEST_READY, timeline.agent_ready),
        ];
        values.extend(guest.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        insert_run_init(&mut values, &timeline, &seen);
        if let Some(at) = seen.get("msg=\"agent ready\"") {
            values.insert(key::HOST_READY_SEEN, at.as_secs_f64());
        }
        (values, metrics, notes)
    });
    Outcome { result, console: Some(console), command_line: Some(vm.qemu_command_line()) }
}

/// The kernel-side numbers, once `GUEST_READY` is in `values`.
fn insert_run_init(values: &mut Sample, timeline: &BootTimeline, seen: &BTreeMap<&'static str, Duration>) {
    if let Some(ahead) = timeline.printk_ahead {
        values.insert(key::GUEST_PRINTK_AHEAD, ahead);
    }
    if let (Some(exec), Some(&ready)) = (timeline.kernel_run_init_boottime(), values.get(key::GUEST_READY)) {
        values.insert(key::GUEST_EXEC_TO_READY, ready - exec);
    }
    if let Some(guest) = timeline.kernel_run_init {
        values.insert(key::GUEST_RUN_INIT, guest);
        if let Some(host) = seen.get(KERNEL_RUN_INIT) {
            values.insert(key::HOST_RUN_INIT_SEEN, host.as_secs_f64());
            values.insert(key::HOST_BEFORE_GUEST_CLOCK, host.as_secs_f64() - guest);
        }
    }
}
