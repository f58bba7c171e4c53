//! The host's side of an agent run, as a runtime would do it: dial until a Health.Check is
//! answered SERVING, read GetMetrics and the host processes' RSS, then DestroySandbox and wait
//! for QEMU to exit, timing each step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use protocols::agent::{DestroySandboxRequest, GetMetricsRequest};
use protocols::error::chain as error_chain;
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::ttrpc::{self, context, Code};
use wisp_shim::agent_dial::{AgentConn, DialError};
use wisp_tests::timeline::parse_prometheus_text;
use wisp_tests::{Vm, VmError};

use crate::container::Share;
use crate::dial_attempt;
use crate::host::{proc_comm, proc_rollup_bytes, proc_status_bytes, qemu_cpu_seconds};
use crate::metrics::{key, Sample};
use crate::runs::Measured;

/// An agent RSS below this is a misreading, not a measurement.
const IMPLAUSIBLE_RSS_BYTES: f64 = 256.0 * 1024.0;
/// How long one Health.Check may go unanswered before the bench dials again.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

fn ctx(remaining: Duration) -> context::Context {
    context::with_timeout(i64::try_from(remaining.as_nanos()).unwrap_or(i64::MAX).max(1))
}

/// Talks to the agent of the booted `vm` (and, with `container`, runs a container in it) until
/// QEMU exits after DestroySandbox, all within `timeout` of QEMU's spawn.
pub fn agent_session(vm: &mut Vm, timeout: Duration, container: Option<Share>) -> Result<Measured> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building a runtime")?;
    let spawned = vm.spawned_at();
    let deadline = spawned + timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let mut values = Sample::new();
    let mut notes = Vec::new();

    let (agent, connected, check_notes) = runtime.block_on(first_check(vm, deadline))?;
    notes.extend(check_notes);
    values.insert(key::HOST_CONNECTED, connected.as_secs_f64());
    values.insert(key::HOST_SERVING, spawned.elapsed().as_secs_f64());
    values.extend(qemu_cpu_seconds(vm).map(|cpu| (key::HOST_QEMU_CPU_SERVING, cpu)));

    let asked = Instant::now();
    let answer = runtime.block_on(agent.agent().get_metrics(ctx(remaining()), &GetMetricsRequest::new()));
    let rpc = asked.elapsed();
    let mut metrics = BTreeMap::new();
    match answer {
        Ok(answer) => {
            values.insert(key::HOST_METRICS_RPC, rpc.as_secs_f64());
            metrics = parse_prometheus_text(&answer.metrics).context("GetMetrics answered bad Prometheus text")?;
            let wanted = [
                (key::AGENT_RSS, "wisp_agent_resident_memory_bytes"),
                (key::AGENT_THREADS, "wisp_agent_threads"),
                (key::AGENT_MINOR_FAULTS, "wisp_agent_minor_page_faults"),
                (key::GUEST_MEM_TOTAL, "wisp_guest_memory_total_bytes"),
                (key::GUEST_MEM_AVAILABLE, "wisp_guest_memory_available_bytes"),
            ];
            for (k, metric) in wanted {
                match metrics.get(metric) {
                    // A static binary cannot run in less; such a value is a misreading (seen:
                    // 4096 from a two-threaded agent), kept in `metrics` but out of the stats.
                    Some(&v) if k == key::AGENT_RSS && v < IMPLAUSIBLE_RSS_BYTES => {
                        notes.push(format!("GetMetrics reported an implausible {metric} {v}; left out of the summary"))
                    }
                    Some(&v) => {
                        values.insert(k, v);
                    }
                    None => notes.push(format!("GetMetrics lacks {metric}")),
                }
            }
        }
        Err(ttrpc::Error::RpcStatus(status)) if status.code() == Code::UNIMPLEMENTED => {
            notes.push("GetMetrics is not implemented by this agent: RSS n/a".to_owned());
        }
        Err(err) => return Err(err).context("GetMetrics"),
    }
    if let (Some(total), Some(available)) = (values.get(key::GUEST_MEM_TOTAL), values.get(key::GUEST_MEM_AVAILABLE)) {
        values.insert(key::GUEST_MEM_USED, total - available);
    }
    for (pid, name) in vm.pids().into_iter().filter_map(|pid| Some((pid, proc_comm(pid)?))) {
        if name.starts_with("qemu") {
            values.extend(proc_status_bytes(pid, "VmRSS").map(|v| (key::QEMU_RSS, v)));
            // Guest RAM is a shared memfd only with vhost-user (hybrid vsock); else it is anonymous.
            let shmem = proc_status_bytes(pid, "RssShmem").filter(|&v| v > 0.0);
            values.extend(shmem.map(|v| (key::QEMU_RSS_SHMEM, v)));
            values.extend(proc_rollup_bytes(pid, "Pss").map(|v| (key::QEMU_PSS, v)));
        } else if name.starts_with("vhost-device") {
            values.extend(proc_status_bytes(pid, "VmRSS").map(|v| (key::HELPER_RSS, v)));
        }
    }

    if let Some(share) = container {
        runtime.block_on(crate::container::run(&agent, share, spawned, &mut values)).context("the container")?;
    }

    let destroy_sent = Instant::now();
    runtime
        .block_on(agent.agent().destroy_sandbox(ctx(remaining()), &DestroySandboxRequest::new()))
        .context("DestroySandbox")?;
    let status = vm.wait_exit(remaining())?;
    values.insert(key::HOST_EXIT, spawned.elapsed().as_secs_f64());
    values.insert(key::HOST_DESTROY_TO_EXIT, destroy_sent.elapsed().as_secs_f64());
    ensure!(status.success(), "qemu exited with {status} after DestroySandbox; its output:\n{}", vm.qemu_log());
    drop(agent);
    Ok((values, metrics, notes))
}

/// Dials until the agent answers a Health.Check with SERVING, as a runtime would: short dial
/// attempts back to back, so the time measured is not inflated by a long back-off (longer after
/// a CONNECT went unanswered: [`dial_attempt`]); a Check
/// unanswered for [`CHECK_TIMEOUT`] drops the connection and dials again. Returns the
/// connection, when it was established (since QEMU's spawn), and notes on anything unusual.
async fn first_check(vm: &mut Vm, deadline: Instant) -> Result<(AgentConn, Duration, Vec<String>)> {
    let mut dials = 0u32;
    let mut last_dial_error = None;
    let mut notes = Vec::new();
    let mut attempt = dial_attempt::SHORT;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let last = last_dial_error.map_or_else(String::new, |e| format!("; last dial error: {e}"));
            bail!(
                "no answer to Health.Check within the timeout after {dials} dial(s){last}; {}; console:\n{}",
                if notes.is_empty() { "no Check was sent".to_owned() } else { notes.join("; ") },
                vm.console_tail(20)
            );
        }
        dials += 1;
        let agent = match vm.connect_agent(attempt.min(remaining)).await {
            Ok(agent) => agent,
            Err(VmError::Agent { source: err @ DialError::Timeout { .. }, .. }) => {
                attempt = dial_attempt::after(&err);
                last_dial_error = Some(error_chain(&err));
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let connected = vm.spawned_at().elapsed();
        let wait = CHECK_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        match agent.health().check(ctx(wait), &CheckRequest::new()).await {
            Ok(answer) => {
                let status = answer.status.enum_value();
                ensure!(status == Ok(ServingStatus::SERVING), "Health.Check answered {status:?}");
                return Ok((agent, connected, notes));
            }
            // No answer, or the connection went away under us: dial again.
            Err(err) => {
                if let Some(status) = vm.try_exit_status()? {
                    return Err(vm.qemu_exited(status, "an answer to Health.Check".to_owned()).into());
                }
                notes.push(format!(
                    "Health.Check on a connection made at {:.3} s failed at {:.3} s ({}); dialed again",
                    connected.as_secs_f64(),
                    vm.spawned_at().elapsed().as_secs_f64(),
                    rpc_error(&err)
                ));
            }
        }
    }
}

/// A ttrpc error, short.
fn rpc_error(err: &ttrpc::Error) -> String {
    match err {
        ttrpc::Error::RpcStatus(status) => format!("{:?}: {}", status.code(), status.message()),
        other => format!("{other:?}"),
    }
}
