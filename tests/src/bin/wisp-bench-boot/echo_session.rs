//! The host's side of a true-floor run: dial the guest's vsock port as a runtime dials the
//! agent, send a Health.Check request frame, and time when the same bytes come back (the true
//! floor's `/init` echoes). Then hang up, which powers the guest off, and wait for QEMU's exit.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use protocols::health::CheckRequest;
use protocols::protobuf::Message as _;
use protocols::ttrpc::{MessageHeader, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wisp_shim::agent_dial::{self, DialError};
use wisp_tests::Vm;

use crate::dial_attempt;
use crate::host::qemu_cpu_seconds;
use crate::metrics::{key, Sample};

/// The bytes of a ttrpc Health.Check request on stream 1, as a runtime's first RPC sends them.
pub fn health_check_frame() -> Result<Vec<u8>> {
    let payload = CheckRequest::new().write_to_bytes().context("encoding CheckRequest")?;
    let request = Request {
        service: "grpc.health.v1.Health".to_owned(),
        method: "Check".to_owned(),
        payload,
        timeout_nano: 10_000_000_000,
        ..Default::default()
    };
    let body = request.write_to_bytes().context("encoding the ttrpc request")?;
    let mut frame: Vec<u8> = MessageHeader::new_request(1, u32::try_from(body.len())?).into();
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Dials the true floor of the booted `vm` until it echoes a Health.Check frame, all within
/// `timeout` of QEMU's spawn; then hangs up and waits for QEMU to exit.
pub fn echo_session(vm: &mut Vm, timeout: Duration) -> Result<Sample> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building a runtime")?;
    let spawned = vm.spawned_at();
    let deadline = spawned + timeout;
    let addr = vm.agent_addr().context("the VM has no agent channel")?;
    let frame = health_check_frame()?;
    let mut values = Sample::new();
    runtime.block_on(async {
        let mut dials = 0u32;
        let mut attempt = dial_attempt::SHORT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                bail!(
                    "the true floor never echoed within the timeout ({dials} dials); console:\n{}",
                    vm.console_tail(20)
                );
            }
            if let Some(status) = vm.try_exit_status()? {
                return Err(vm.qemu_exited(status, "the true floor's echo".to_owned()).into());
            }
            dials += 1;
            let mut stream = match agent_dial::dial(&addr, attempt.min(remaining)).await {
                Ok(stream) => stream,
                Err(err @ DialError::Timeout { .. }) => {
                    attempt = dial_attempt::after(&err);
                    continue;
                }
                Err(err) => return Err(err).context("dialing the true floor"),
            };
            values.insert(key::HOST_CONNECTED, spawned.elapsed().as_secs_f64());
            let mut back = vec![0u8; frame.len()];
            let exchange = async {
                stream.write_all(&frame).await?;
                stream.read_exact(&mut back).await
            };
            match tokio::time::timeout(remaining, exchange).await {
                Ok(Ok(_)) => {
                    values.insert(key::HOST_SERVING, spawned.elapsed().as_secs_f64());
                    values.extend(qemu_cpu_seconds(vm).map(|cpu| (key::HOST_QEMU_CPU_SERVING, cpu)));
                    ensure!(back == frame, "the true floor echoed other bytes than it was sent");
                    return Ok(());
                }
                // The connection went away before the echo: dial again.
                Ok(Err(_)) => continue,
                Err(_) => bail!("the true floor accepted but never echoed; console:\n{}", vm.console_tail(20)),
            }
        }
    })?;
    let status = vm.wait_exit(deadline.saturating_duration_since(Instant::now()))?;
    values.insert(key::HOST_EXIT, spawned.elapsed().as_secs_f64());
    ensure!(status.success(), "qemu exited with {status} after the echo; its output:\n{}", vm.qemu_log());
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_ttrpc_request_for_health_check() {
        let frame = health_check_frame().unwrap();
        let header = MessageHeader::from(&frame[..10]);
        assert_eq!((header.stream_id, header.type_, header.flags), (1, 1, 0));
        assert_eq!(header.length as usize, frame.len() - 10);
        let request = Request::parse_from_bytes(&frame[10..]).unwrap();
        assert_eq!((request.service.as_str(), request.method.as_str()), ("grpc.health.v1.Health", "Check"));
    }
}
