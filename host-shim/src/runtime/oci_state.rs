//! What `state` and `list` print, in runc 1.1's shapes (podman parses `state` after every
//! command; people read `list`).
//!
//! `state`: the OCI state with runc's `rootfs`, pretty-printed with two spaces and no final
//! newline; `pid` is the monitor's (the process the caller waits for), 0 once stopped;
//! `annotations` left out when empty and `owner` empty, as runc prints them. `list`: a table
//! aligned as Go's tabwriter (minimum width 12, padding 3) with the owner's user name, a JSON
//! array (`null` when there is nothing, as runc), or only the ids with `--quiet`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::store::{ContainerState, Status};
use crate::state::Processes;

/// One container as the OCI state (runc's field order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: u32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub owner: String,
}

impl OciState {
    /// The state of `record` now (a dead monitor reads stopped, with pid 0); `owner` as the
    /// command prints it (empty for `state`, the user name for `list`).
    pub fn of(record: &ContainerState, procs: &dyn Processes, owner: String) -> Self {
        let status = record.live_status(procs);
        let pid = match (status, &record.monitor) {
            (Status::Stopped, _) | (_, None) => 0,
            (_, Some(monitor)) => monitor.pid,
        };
        Self {
            oci_version: oci_spec::runtime::VERSION.to_owned(),
            id: record.id.clone(),
            pid,
            status,
            bundle: record.bundle.clone(),
            rootfs: record.rootfs.clone(),
            created: record.created.clone(),
            annotations: record.annotations.clone(),
            owner,
        }
    }
}

/// `state ID`'s output.
pub fn state_json(record: &ContainerState, procs: &dyn Processes) -> String {
    // Strings, numbers and a map of strings always serialize.
    serde_json::to_string_pretty(&OciState::of(record, procs, String::new())).unwrap_or_default()
}

/// The user name of `uid` for `list` (`#UID` without one, as runc).
pub fn owner_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("#{uid}"),
    }
}

/// `list --format json`'s output, newline included.
pub fn list_json(records: &[ContainerState], procs: &dyn Processes) -> String {
    if records.is_empty() {
        return "null\n".to_owned();
    }
    let states: Vec<_> = records.iter().map(|r| OciState::of(r, procs, owner_name(r.owner))).collect();
    serde_json::to_string(&states).unwrap_or_default() + "\n"
}

/// `list --quiet`'s output.
pub fn list_quiet(records: &[ContainerState]) -> String {
    records.iter().map(|r| format!("{}\n", r.id)).collect()
}

/// `list`'s table: `ID PID STATUS BUNDLE CREATED OWNER`.
pub fn list_table(records: &[ContainerState], procs: &dyn Processes) -> String {
    let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(str::to_owned).to_vec()];
    for record in records {
        let state = OciState::of(record, procs, owner_name(record.owner));
        rows.push(vec![
            state.id,
            state.pid.to_string(),
            state.status.to_string(),
            state.bundle.display().to_string(),
            state.created,
            state.owner,
        ]);
    }
    tabwrite(&rows)
}

/// Go's `tabwriter.NewWriter(w, 12, 1, 3, ' ', 0)` over tab-separated cells: every column but
/// the last padded to its widest cell plus 3, at least 12.
fn tabwrite(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width =
        |c: usize| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count() + 3).max().unwrap_or(0).max(12);
    let widths: Vec<usize> = (0..columns.saturating_sub(1)).map(width).collect();
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            match widths.get(i) {
                Some(&w) if i + 1 < row.len() => out.push_str(&format!("{cell:<w$}")),
                _ => out.push_str(cell),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::store::tests::record;
    use crate::runtime::store::Monitor;
    use crate::state::ProcFs;

    fn me() -> Option<Monitor> {
        Monitor::of(std::process::id(), &ProcFs)
    }

    #[test]
    fn state_is_runcs_json_with_every_oci_field() {
        let out = state_json(&record("x", me(), Status::Created), &ProcFs);
        // runc 1.1.5's `state` of a created container, this process as its monitor.
        let expected = format!(
            "{{\n  \"ociVersion\": \"{}\",\n  \"id\": \"x\",\n  \"pid\": {},\n  \"status\": \"created\",\n  \"bundle\": \"/tmp/rc-probe/b\",\n  \"rootfs\": \"/tmp/rc-probe/b/rootfs\",\n  \"created\": \"2026-12-06T01:34:23.040327255Z\",\n  \"annotations\": {{\n    \"a.b\": \"c\"\n  }},\n  \"owner\": \"\"\n}}",
            oci_spec::runtime::VERSION,
            std::process::id()
        );
        assert_eq!(out, expected);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        for field in ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "annotations", "owner"] {
            assert!(v.get(field).is_some(), "{field} missing in {out}");
        }
        let bare = ContainerState { annotations: BTreeMap::new(), ..record("x", me(), Status::Running) };
        let v: serde_json::Value = serde_json::from_str(&state_json(&bare, &ProcFs)).unwrap();
        assert!(v.get("annotations").is_none(), "left out when empty, as runc");
        assert_eq!(v["status"], "running");
    }

    #[test]
    fn a_stopped_container_has_pid_0() {
        for record in [record("x", me(), Status::Stopped), record("x", None, Status::Running)] {
            let state = OciState::of(&record, &ProcFs, String::new());
            assert_eq!((state.pid, state.status), (0, Status::Stopped));
        }
    }

    #[test]
    fn list_prints_runcs_table_json_and_ids() {
        let records = [record("x", me(), Status::Created), record("a-longer-id-than-twelve", None, Status::Stopped)];
        let table = list_table(&records, &ProcFs);
        let pid = std::process::id().to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        // runc's own table of one container, as printed here: columns of 12 at least.
        assert_eq!(
            lines[0],
            "ID                        PID         STATUS      BUNDLE            CREATED                          OWNER"
        );
        assert_eq!(
            lines[1],
            format!(
                "x                         {pid:<12}created     /tmp/rc-probe/b   2026-12-06T01:34:23.040327255Z   {}",
                owner_name(0)
            )
        );
        assert!(lines[2].starts_with("a-longer-id-than-twelve   0           stopped     "), "{}", lines[2]);
        let json: Vec<OciState> = serde_json::from_str(&list_json(&records, &ProcFs)).unwrap();
        assert_eq!(json.len(), 2);
        assert_eq!((json[0].id.as_str(), json[0].pid.to_string(), json[0].owner.clone()), ("x", pid, owner_name(0)));
        assert_eq!(list_json(&[], &ProcFs), "null\n");
        assert_eq!(list_quiet(&records), "x\na-longer-id-than-twelve\n");
        assert_eq!(list_table(&[], &ProcFs), "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n");
    }

    #[test]
    fn owners_are_names_or_numbers() {
        assert_eq!(owner_name(0), "root");
        assert_eq!(owner_name(3_999_999_999), "#3999999999");
    }
}
