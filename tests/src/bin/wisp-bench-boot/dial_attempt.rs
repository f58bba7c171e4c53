//! How long the bench's next dial attempt may take. Short attempts back to back keep the
//! polling slack in the time to first answer small while the guest is not listening (the
//! hybrid vsock backend then drops a CONNECT at once); but a CONNECT met with silence means the
//! guest is there and slow (a loaded host: seen at load average 13 on 2 cores), and cutting
//! every such attempt short livelocks: each is given up before the guest's answer arrives, for
//! the whole timeout. After silence the next attempt gets the shim's own handshake time.

use std::time::Duration;

use wisp_shim::agent_dial::{DialError, HANDSHAKE_TIMEOUT};

/// The first attempt, and every attempt after one the channel answered (or never reached).
pub const SHORT: Duration = Duration::from_millis(100);

/// The attempt after `failed`: [`HANDSHAKE_TIMEOUT`] if its last CONNECT went unanswered.
pub fn after(failed: &DialError) -> Duration {
    match failed {
        DialError::Timeout { last, .. } if matches!(**last, DialError::NoAnswer { .. }) => HANDSHAKE_TIMEOUT,
        _ => SHORT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use wisp_shim::agent_dial::AgentAddr;

    fn timeout(last: DialError) -> DialError {
        let addr = AgentAddr::HybridVsock { path: PathBuf::from("/s"), port: 1024 };
        DialError::Timeout { addr, waited: SHORT, attempts: 1, last: Box::new(last) }
    }

    #[test]
    fn silence_earns_a_full_handshake_and_a_dropped_connect_a_short_retry() {
        let silent = DialError::NoAnswer { path: PathBuf::from("/s"), port: 1024, waited: SHORT };
        assert_eq!(after(&timeout(silent)), HANDSHAKE_TIMEOUT);
        let closed = DialError::BackendClosed { path: PathBuf::from("/s"), port: 1024 };
        assert_eq!(after(&timeout(closed)), SHORT);
    }
}
