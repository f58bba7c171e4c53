//! vCPUs and RAM hot-plugged into a clone that is bigger than its template
//! ([`crate::template`]).
//!
//! A template's VM has room to grow (`-smp N,maxcpus=`, `-m N,slots=,maxmem=`, see
//! [`super::cmdline`]); after the restore and before the clone runs again, the shim plugs the
//! missing vCPUs (`device_add` of the CPU type and topology QEMU lists as free in
//! `query-hotpluggable-cpus`) and the missing RAM as one `pc-dimm` on a fresh
//! `memory-backend-ram`. The guest learns of both by ACPI when it runs; the kernel onlines the
//! RAM (`memhp_default_state=online`) and the agent the vCPUs (OnlineCPUMem, from the sandbox).
//!
//! The QMP arguments are built by pure functions, unit-tested without QEMU.

use serde_json::{json, Map, Value};

use crate::hypervisor::qmp::Qmp;
use crate::hypervisor::{Growth, HypervisorError};

/// The id of the memory backend and DIMM a clone's added RAM is.
const MEMORY_ID: &str = "grow-mem0";
const DIMM_ID: &str = "grow-dimm0";

/// The topology properties `query-hotpluggable-cpus` gives, in the order slots are taken.
const TOPOLOGY: [&str; 5] = ["socket-id", "die-id", "cluster-id", "core-id", "thread-id"];

/// The `device_add` arguments for `count` more vCPUs from `query-hotpluggable-cpus`' answer:
/// free slots (no `qom-path`) in topology order, each as the CPU type QEMU names for it.
pub fn vcpu_devices(hotpluggable: &Value, count: u32) -> Result<Vec<Value>, String> {
    let mut free: Vec<&Map<String, Value>> = hotpluggable
        .as_array()
        .ok_or("query-hotpluggable-cpus did not answer a list")?
        .iter()
        .filter_map(Value::as_object)
        .filter(|slot| !slot.contains_key("qom-path"))
        .collect();
    let position = |slot: &Map<String, Value>| -> Vec<u64> {
        TOPOLOGY.iter().map(|p| slot.get("props").and_then(|props| props[p].as_u64()).unwrap_or(0)).collect()
    };
    free.sort_by_key(|slot| position(slot));
    if free.len() < count as usize {
        return Err(format!("{count} vCPUs to add, {} free slots", free.len()));
    }
    free.iter()
        .take(count as usize)
        .enumerate()
        .map(|(n, slot)| {
            let driver = slot.get("type").and_then(Value::as_str).ok_or("a CPU slot without a type")?;
            let mut args = Map::new();
            args.insert("driver".into(), json!(driver));
            args.insert("id".into(), json!(format!("grow-vcpu{n}")));
            if let Some(props) = slot.get("props").and_then(Value::as_object) {
                args.extend(props.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Ok(Value::Object(args))
        })
        .collect()
}

/// The `object-add` and `device_add` arguments that add `memory_mib` of RAM as one DIMM.
pub fn memory_commands(memory_mib: u32) -> [(&'static str, Value); 2] {
    let size = u64::from(memory_mib) << 20;
    [
        ("object-add", json!({ "qom-type": "memory-backend-ram", "id": MEMORY_ID, "size": size })),
        ("device_add", json!({ "driver": "pc-dimm", "id": DIMM_ID, "memdev": MEMORY_ID })),
    ]
}

/// Plugs `growth` into the (paused) VM behind `qmp`.
pub async fn plug(qmp: &mut Qmp, growth: Growth) -> Result<(), HypervisorError> {
    if growth.vcpus > 0 {
        let slots = qmp.execute("query-hotpluggable-cpus", None).await?;
        for device in vcpu_devices(&slots, growth.vcpus).map_err(HypervisorError::Unsupported)? {
            qmp.execute("device_add", Some(device)).await?;
        }
    }
    if growth.memory_mib > 0 {
        for (command, args) in memory_commands(growth.memory_mib) {
            qmp.execute(command, Some(args)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU 7.2 answers for q35 `-smp 1,maxcpus=4` (newest slot first, the boot CPU
    /// plugged).
    fn q35_slots() -> Value {
        let slot = |socket: u64, plugged: bool| {
            let mut s = json!({
                "props": { "core-id": 0, "thread-id": 0, "socket-id": socket },
                "vcpus-count": 1,
                "type": "qemu64-x86_64-cpu"
            });
            if plugged {
                s["qom-path"] = json!("/machine/unattached/device[0]");
            }
            s
        };
        json!([slot(3, false), slot(2, false), slot(1, false), slot(0, true)])
    }

    #[test]
    fn vcpus_take_the_lowest_free_slots_as_the_type_qemu_names() {
        let devices = vcpu_devices(&q35_slots(), 2).unwrap();
        assert_eq!(
            devices,
            [
                json!({ "driver": "qemu64-x86_64-cpu", "id": "grow-vcpu0", "socket-id": 1, "core-id": 0, "thread-id": 0 }),
                json!({ "driver": "qemu64-x86_64-cpu", "id": "grow-vcpu1", "socket-id": 2, "core-id": 0, "thread-id": 0 }),
            ]
        );
        assert_eq!(vcpu_devices(&q35_slots(), 0).unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn more_vcpus_than_free_slots_or_a_strange_answer_is_refused() {
        assert_eq!(vcpu_devices(&q35_slots(), 4).unwrap_err(), "4 vCPUs to add, 3 free slots");
        assert!(vcpu_devices(&json!({"error": 1}), 1).is_err());
        assert!(vcpu_devices(&json!([{ "props": {} }]), 1).unwrap_err().contains("without a type"));
    }

    #[test]
    fn ram_is_one_dimm_on_its_own_backend() {
        let [(backend, object), (device, dimm)] = memory_commands(256);
        assert_eq!((backend, device), ("object-add", "device_add"));
        assert_eq!(object, json!({ "qom-type": "memory-backend-ram", "id": "grow-mem0", "size": 268435456u64 }));
        assert_eq!(dimm, json!({ "driver": "pc-dimm", "id": "grow-dimm0", "memdev": "grow-mem0" }));
    }
}
