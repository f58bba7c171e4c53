//! The runtime's log lines as runc writes them with `--log-format json`: one object per line,
//! `{"level","msg","time"}` plus the record's keys. Docker and podman show the last `error`
//! line of this file when a command fails, so the monitor writes there too.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};
use slog::{Drain, Key, OwnedKVList, Record, KV};

/// A slog drain appending JSON lines to a file.
#[derive(Debug)]
pub struct JsonLines {
    file: Mutex<File>,
}

impl JsonLines {
    /// Appends to `path` (created 0600 if missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(Self { file: Mutex::new(file) })
    }
}

/// The record's and the logger's keys, as JSON strings.
struct Fields(Map<String, Value>);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0.entry(key.to_string()).or_insert_with(|| Value::String(val.to_string()));
        Ok(())
    }
}

impl Drain for JsonLines {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(Map::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let mut line = fields.0;
        line.insert("level".into(), Value::String(level(record.level()).into()));
        line.insert("msg".into(), Value::String(record.msg().to_string()));
        line.insert("time".into(), Value::String(super::log::rfc3339(std::time::SystemTime::now(), true)));
        if let (Ok(mut file), Ok(mut bytes)) = (self.file.lock(), serde_json::to_vec(&line)) {
            bytes.push(b'\n');
            let _ = file.write_all(&bytes);
        }
        Ok(())
    }
}

/// logrus's level names, which runc's callers parse.
fn level(level: slog::Level) -> &'static str {
    match level {
        slog::Level::Critical => "fatal",
        slog::Level::Error => "error",
        slog::Level::Warning => "warning",
        slog::Level::Info => "info",
        slog::Level::Debug => "debug",
        slog::Level::Trace => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_level_msg_time_and_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let log = slog::Logger::root(JsonLines::open(&path).unwrap().fuse(), slog::o!("container" => "c1"));
        slog::error!(log, "it broke"; "why" => "no disk");
        let text = std::fs::read_to_string(&path).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "error");
        assert_eq!(line["msg"], "it broke");
        assert_eq!(line["why"], "no disk");
        assert_eq!(line["container"], "c1");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
}
