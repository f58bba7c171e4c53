//! The shim's phase lines (`host-shim/src/timeline.rs`) read back from containerd's log, where
//! a shim's log lines land as `time="..." level=info msg="phase, shim: ID, namespace: NS, ...,
//! phase: agent ready, unix_ms: 1765000000000.0"` (slog's key-values flattened by slog-stdlog).

/// One phase of one shim's sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// The shim's id (the sandbox's: the first container's id).
    pub shim: String,
    pub name: String,
    /// When, on the host's wall clock, in milliseconds since the epoch.
    pub unix_ms: f64,
}

/// Every phase line of `log`, in order.
pub fn phases(log: &str) -> Vec<Phase> {
    log.lines()
        .filter_map(|line| {
            let msg = &line[line.find("msg=\"phase, ")? + "msg=\"".len()..];
            Some(Phase {
                shim: field(msg, "shim")?.to_owned(),
                name: field(msg, "phase")?.to_owned(),
                unix_ms: field(msg, "unix_ms")?.parse().ok()?,
            })
        })
        .collect()
}

/// The value of `key` in a flattened message (`, key: value` up to the next `,` or `"`).
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    let marker = format!(", {key}: ");
    let rest = &msg[msg.find(&marker)? + marker.len()..];
    let end = rest.find([',', '"']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_are_read_and_others_skipped() {
        let log = "time=\"2026-12-06T05:00:00Z\" level=info msg=\"phase, shim: demo, namespace: default, phase: agent ready, unix_ms: 1765000001234.5\"\n\
                   time=\"2026-12-06T05:00:00Z\" level=info msg=\"agent ready, shim: demo, ms: 1500\"\n\
                   time=\"2026-12-06T05:00:01Z\" level=info msg=\"phase, shim: demo, namespace: default, container: demo, exec: , phase: first output, unix_ms: 1765000001300.0\"\n";
        assert_eq!(
            phases(log),
            [
                Phase { shim: "demo".into(), name: "agent ready".into(), unix_ms: 1_765_000_001_234.5 },
                Phase { shim: "demo".into(), name: "first output".into(), unix_ms: 1_765_000_001_300.0 },
            ]
        );
    }
}
