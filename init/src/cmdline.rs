//! `agent.*` options from the kernel command line.
//!
//! The command line is the only configuration a guest has before the agent serves,
//! so parsing it must never fail: an unknown option is reported and ignored, a
//! malformed value is reported and the default kept. The caller logs the
//! [`Diagnostic`]s once a logger exists (parsing happens before it does, because the
//! log level is itself an option).
//!
//! Names follow Kata's agent where one exists (`agent.log`, `agent.server_addr`,
//! `agent.hotplug_timeout`, `agent.debug_console`, `agent.unified_cgroup_hierarchy`)
//! so a Kata configuration's `kernel_params` keep their meaning.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The vsock port Kata runtimes dial.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;
/// Kata's default; users hit it with slow hot-plug, hence `agent.hotplug_timeout`.
pub const DEFAULT_HOTPLUG_TIMEOUT: Duration = Duration::from_secs(3);

/// Severity threshold of the agent's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Critical,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl FromStr for LogLevel {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "critical" | "crit" | "fatal" | "panic" => LogLevel::Critical,
            "error" | "err" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return Err(()),
        })
    }
}

/// Which transport the agent serves ttrpc on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// vsock when the VM has a virtio-vsock device, else the virtio-serial port.
    Auto,
    Vsock,
    Serial,
}

impl FromStr for Channel {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "auto" => Ok(Channel::Auto),
            "vsock" => Ok(Channel::Vsock),
            "serial" | "virtio-serial" => Ok(Channel::Serial),
            _ => Err(()),
        }
    }
}

/// Everything the kernel command line can tell the guest side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    pub log_level: LogLevel,
    pub channel: Channel,
    pub vsock_port: u32,
    pub hotplug_timeout: Duration,
    pub debug_console: bool,
    /// `Some(true)` forces cgroup v2, `Some(false)` v1; `None` lets init decide.
    pub cgroup_v2: Option<bool>,
    pub hostname: String,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            log_level: LogLevel::Info,
            channel: Channel::Auto,
            vsock_port: DEFAULT_VSOCK_PORT,
            hotplug_timeout: DEFAULT_HOTPLUG_TIMEOUT,
            debug_console: false,
            cgroup_v2: None,
            hostname: "localhost".to_owned(),
        }
    }
}

/// A problem found while parsing; never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    UnknownOption { name: String },
    BadValue { name: String, value: String, expected: &'static str },
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::UnknownOption { name } => write!(f, "unknown option {name} ignored"),
            Diagnostic::BadValue { name, value, expected } => {
                write!(f, "bad value {value:?} for {name} (expected {expected}); using the default")
            }
        }
    }
}

impl BootOptions {
    /// Parses a kernel command line. Tokens without the `agent.` prefix belong to
    /// the kernel or other programs and are left alone, except the cgroup switches
    /// systemd users already set.
    pub fn parse(cmdline: &str) -> (BootOptions, Vec<Diagnostic>) {
        let mut opts = BootOptions::default();
        let mut diags = Vec::new();
        for token in cmdline.split_ascii_whitespace() {
            let (name, value) = match token.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (token, None),
            };
            opts.apply(name, value, &mut diags);
        }
        (opts, diags)
    }

    fn apply(&mut self, name: &str, value: Option<&str>, diags: &mut Vec<Diagnostic>) {
        let mut bad = |expected: &'static str| {
            diags.push(Diagnostic::BadValue { name: name.to_owned(), value: value.unwrap_or("").to_owned(), expected })
        };
        match name {
            "agent.log" => match value.map(str::parse) {
                Some(Ok(level)) => self.log_level = level,
                _ => bad("critical|error|warning|info|debug|trace"),
            },
            "agent.channel" => match value.map(str::parse) {
                Some(Ok(channel)) => self.channel = channel,
                _ => bad("auto|vsock|serial"),
            },
            "agent.port" => match value.and_then(parse_port) {
                Some(port) => self.vsock_port = port,
                None => bad("a vsock port number 1..4294967294"),
            },
            // Kata's spelling: vsock://-1:1024 (any CID, port 1024).
            "agent.server_addr" => match value.and_then(parse_server_addr) {
                Some(port) => {
                    self.vsock_port = port;
                    self.channel = Channel::Vsock;
                }
                None => bad("vsock://-1:PORT"),
            },
            "agent.hotplug_timeout" => match value.and_then(parse_seconds) {
                Some(d) => self.hotplug_timeout = d,
                None => bad("seconds, 1..3600"),
            },
            "agent.debug_console" => match parse_flag(value) {
                Some(on) => self.debug_console = on,
                None => bad("a flag (no value, 1/0, true/false)"),
            },
            "agent.unified_cgroup_hierarchy" | "systemd.unified_cgroup_hierarchy" => match parse_flag(value) {
                Some(on) => self.cgroup_v2 = Some(on),
                None => bad("1/0, true/false"),
            },
            "cgroup_no_v1" if value == Some("all") => self.cgroup_v2 = Some(true),
            "agent.hostname" => match value {
                Some(h) if valid_hostname(h) => self.hostname = h.to_owned(),
                _ => bad("a hostname of 1..64 letters, digits, '-' and '.'"),
            },
            // Kata options with no meaning here; accepted so Kata configs boot quietly.
            "agent.debug_console_vport"
            | "agent.log_vport"
            | "agent.container_pipe_size"
            | "agent.trace"
            | "agent.devmode" => {}
            n if n.starts_with("agent.") => diags.push(Diagnostic::UnknownOption { name: n.to_owned() }),
            _ => {}
        }
    }
}

fn parse_port(s: &str) -> Option<u32> {
    s.parse().ok().filter(|p| (1..u32::MAX).contains(p))
}

fn parse_server_addr(s: &str) -> Option<u32> {
    let rest = s.strip_prefix("vsock://")?;
    let (cid, port) = rest.rsplit_once(':')?;
    cid.parse::<i64>().ok()?;
    parse_port(port)
}

fn parse_seconds(s: &str) -> Option<Duration> {
    let secs: f64 = s.parse().ok()?;
    (secs > 0.0 && secs <= 3600.0).then(|| Duration::from_secs_f64(secs))
}

fn parse_flag(value: Option<&str>) -> Option<bool> {
    match value {
        None | Some("1") | Some("true") | Some("on") | Some("yes") => Some(true),
        Some("0") | Some("false") | Some("off") | Some("no") => Some(false),
        _ => None,
    }
}

fn valid_hostname(h: &str) -> bool {
    (1..=64).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_agent_options() {
        let (opts, diags) = BootOptions::parse("console=ttyS0 panic=-1 root=/dev/vda");
        assert_eq!(opts, BootOptions::default());
        assert!(diags.is_empty());
    }

    #[test]
    fn every_option_is_read() {
        let (opts, diags) = BootOptions::parse(
            "agent.log=debug agent.channel=serial agent.port=2000 agent.hotplug_timeout=10 \
             agent.debug_console agent.unified_cgroup_hierarchy=1 agent.hostname=pod-1",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(opts.log_level, LogLevel::Debug);
        assert_eq!(opts.channel, Channel::Serial);
        assert_eq!(opts.vsock_port, 2000);
        assert_eq!(opts.hotplug_timeout, Duration::from_secs(10));
        assert!(opts.debug_console);
        assert_eq!(opts.cgroup_v2, Some(true));
        assert_eq!(opts.hostname, "pod-1");
    }

    #[test]
    fn kata_server_addr_selects_vsock_port() {
        let (opts, diags) = BootOptions::parse("agent.server_addr=vsock://-1:1025");
        assert!(diags.is_empty());
        assert_eq!((opts.channel, opts.vsock_port), (Channel::Vsock, 1025));
    }

    #[test]
    fn bad_values_keep_defaults_and_are_reported() {
        let (opts, diags) = BootOptions::parse(
            "agent.log=loud agent.port=0 agent.port=99999999999 agent.hotplug_timeout=-1 \
             agent.channel=pigeon agent.hostname=a/b agent.debug_console=maybe agent.server_addr=tcp://x",
        );
        assert_eq!(opts, BootOptions::default());
        assert_eq!(diags.len(), 8, "{diags:?}");
        assert!(diags.iter().all(|d| matches!(d, Diagnostic::BadValue { .. })));
        assert!(diags[0].to_string().contains("agent.log"));
    }

    #[test]
    fn unknown_agent_options_are_reported_not_fatal() {
        let (opts, diags) = BootOptions::parse("agent.frobnicate=1 agent.log=warn");
        assert_eq!(opts.log_level, LogLevel::Warning);
        assert_eq!(diags, vec![Diagnostic::UnknownOption { name: "agent.frobnicate".into() }]);
    }

    #[test]
    fn cgroup_switches_follow_systemd_spelling() {
        assert_eq!(BootOptions::parse("cgroup_no_v1=all").0.cgroup_v2, Some(true));
        assert_eq!(BootOptions::parse("systemd.unified_cgroup_hierarchy=0").0.cgroup_v2, Some(false));
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for s in ["agent.=", "=", "agent.log=", "agent.port=:", "agent.server_addr=vsock://:", "\u{0}agent.x"] {
            let _ = BootOptions::parse(s);
        }
    }
}
