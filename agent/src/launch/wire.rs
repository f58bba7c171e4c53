//! The launcher's socket protocol: one JSON document per line, each way.
//!
//! The parent sends the [`Job`]; the child reports its final pid, asks for
//! the user-namespace maps and the createRuntime hooks, says "created", and
//! waits for "start". The child's end is close-on-exec, so EOF after "start"
//! (or after the pid, for an exec) means `execve` succeeded.

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::WireError;

/// What the launcher child is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Job {
    Init {
        container_id: String,
        spec: Box<oci_spec::runtime::Spec>,
        bundle: PathBuf,
        terminal: bool,
    },
    Exec {
        container_id: String,
        init_pid: i32,
        process: Box<oci_spec::runtime::Process>,
        spec: Box<oci_spec::runtime::Spec>,
        terminal: bool,
    },
}

/// Child to parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToParent {
    /// A line for the agent's log (a skipped syscall, an ignored setting).
    Log(String),
    /// The launcher made a user namespace: write its uid/gid maps.
    IdMaps,
    /// The final process, as a pid of the parent's namespace.
    Pid(i32),
    /// The rootfs is mounted, pivot_root is next: run createRuntime hooks.
    RuntimeHooks,
    /// Set up and waiting for [`ToChild::Start`].
    Created,
    Error(WireError),
}

/// Parent to child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToChild {
    Job(Box<Job>),
    IdMapsDone,
    /// createRuntime hooks ran; the state JSON is for createContainer hooks.
    RuntimeHooksDone {
        state: String,
    },
    Start,
}

/// One end of the socket.
#[derive(Debug)]
pub(crate) struct Channel {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Channel {
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        let writer = stream.try_clone()?;
        Ok(Channel { reader: BufReader::new(stream), writer })
    }

    // Both directions go through `serde_json::Value`: the spec's serde code
    // is then the same instantiation the protobuf conversion uses, which
    // keeps the agent binary smaller than a direct reader/writer would.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        let mut line = serde_json::to_value(msg).map_err(io::Error::other)?.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())
    }

    /// The next message, or `None` at EOF.
    pub fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let bad = |e| io::Error::new(io::ErrorKind::InvalidData, e);
        let value: serde_json::Value = serde_json::from_str(&line).map_err(bad)?;
        serde_json::from_value(value).map(Some).map_err(bad)
    }
}
