//! End-to-end checks of the generated protocol: method tables, a real ttrpc
//! round trip over a unix socket, and the on-the-wire encoding.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use protocols::agent::{
    AgentDetails, CreateContainerRequest, Device, ExecProcessRequest, FSGroup, GetDiagnosticDataRequest,
    GuestDetailsRequest, GuestDetailsResponse, MemAgentMemcgConfig, PauseContainerRequest, ReseedRandomDevRequest,
    SetGuestDateTimeRequest, Storage, StringUser,
};
use protocols::agent_ttrpc::{create_agent_service, AgentService, AgentServiceClient};
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::health::{HealthCheckResponse, VersionCheckResponse};
use protocols::health_ttrpc::{create_health, Health, HealthClient};
use protocols::protobuf::{CodedInputStream, Message};
use protocols::ttrpc::{self, r#async::TtrpcContext};

/// The 42 methods of `grpc.AgentService` in Kata Containers 4.1.
const KATA_AGENT_METHODS: [&str; 42] = [
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "UpdateContainer",
    "UpdateEphemeralMounts",
    "StatsContainer",
    "PauseContainer",
    "ResumeContainer",
    "RemoveStaleVirtiofsShareMounts",
    "WriteStdin",
    "ReadStdout",
    "ReadStderr",
    "CloseStdin",
    "TtyWinResize",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "GetIPTables",
    "SetIPTables",
    "GetMetrics",
    "CreateSandbox",
    "DestroySandbox",
    "OnlineCPUMem",
    "ReseedRandomDev",
    "GetGuestDetails",
    "MemHotplugByProbe",
    "SetGuestDateTime",
    "CopyFile",
    "GetOOMEvent",
    "AddSwap",
    "AddSwapPath",
    "GetVolumeStats",
    "ResizeVolume",
    "SetPolicy",
    "GetDiagnosticData",
    "MemAgentMemcgSet",
    "MemAgentCompactSet",
];

/// Implements nothing: every method falls back to the generated default.
struct NoAgent;
impl AgentService for NoAgent {}

struct NoHealth;
impl Health for NoHealth {}

/// Overrides exactly one AgentService method.
struct OneMethodAgent;

#[async_trait]
impl AgentService for OneMethodAgent {
    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        let mut details = AgentDetails::new();
        details.version = "wisp-test".to_string();
        details.init_daemon = true;
        let mut resp = GuestDetailsResponse::new();
        resp.mem_block_size_bytes = if req.mem_block_size { 128 << 20 } else { 0 };
        resp.agent_details = Some(details).into();
        Ok(resp)
    }
}

struct ServingHealth;

#[async_trait]
impl Health for ServingHealth {
    async fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        let mut resp = HealthCheckResponse::new();
        resp.set_status(ServingStatus::SERVING);
        Ok(resp)
    }

    async fn version(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<VersionCheckResponse> {
        let mut resp = VersionCheckResponse::new();
        resp.grpc_version = "wisp-grpc".to_string();
        resp.agent_version = "0.1.0".to_string();
        Ok(resp)
    }
}

fn method_names(
    services: &std::collections::HashMap<String, ttrpc::r#async::Service>,
    service: &str,
) -> BTreeSet<String> {
    assert_eq!(services.len(), 1, "one service per create_* call");
    let svc = services.get(service).unwrap_or_else(|| panic!("service {service} not registered"));
    assert!(svc.streams.is_empty(), "Kata's services are all unary");
    svc.methods.keys().cloned().collect()
}

#[test]
fn agent_service_registers_exactly_katas_42_methods() {
    let services = create_agent_service(Arc::new(NoAgent));
    let got = method_names(&services, "grpc.AgentService");
    let want: BTreeSet<String> = KATA_AGENT_METHODS.iter().map(|m| m.to_string()).collect();
    assert_eq!(want.len(), 42, "the expected list has duplicates");
    assert_eq!(got, want);
}

#[test]
fn health_service_registers_check_and_version() {
    let services = create_health(Arc::new(NoHealth));
    let got = method_names(&services, "grpc.Health");
    let want: BTreeSet<String> = ["Check", "Version"].iter().map(|m| m.to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn descriptor_declares_the_same_methods() {
    let file = protocols::agent::file_descriptor();
    assert_eq!(file.package(), "grpc");
    let services: Vec<_> = file.proto().service.iter().collect();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].name(), "AgentService");
    let declared: BTreeSet<&str> = services[0].method.iter().map(|m| m.name()).collect();
    let want: BTreeSet<&str> = KATA_AGENT_METHODS.iter().copied().collect();
    assert_eq!(declared, want);
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(5_000_000_000)
}

#[tokio::test]
async fn ttrpc_round_trip_over_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("unix://{}", dir.path().join("agent.sock").display());

    let mut services = create_agent_service(Arc::new(OneMethodAgent));
    services.extend(create_health(Arc::new(ServingHealth)));
    let mut server = ttrpc::r#async::Server::new().bind(&addr).expect("bind").register_service(services);
    server.start().await.expect("start");

    let client = ttrpc::r#async::Client::connect(&addr).await.expect("connect");
    let health = HealthClient::new(client.clone());
    let agent = AgentServiceClient::new(client);

    // Health.Check answers SERVING.
    let resp = health.check(ctx(), &CheckRequest::new()).await.expect("Health.Check");
    assert_eq!(resp.status(), ServingStatus::SERVING);

    let version = health.version(ctx(), &CheckRequest::new()).await.expect("Health.Version");
    assert_eq!(version.agent_version, "0.1.0");

    // The one overridden AgentService method works end to end.
    let req = GuestDetailsRequest { mem_block_size: true, ..Default::default() };
    let details = agent.get_guest_details(ctx(), &req).await.expect("GetGuestDetails");
    assert_eq!(details.mem_block_size_bytes, 128 << 20);
    assert_eq!(details.agent_details.version, "wisp-test");
    assert!(details.agent_details.init_daemon);

    // A method the service does not override falls back to the generated
    // default, which answers UNIMPLEMENTED.
    let err = agent
        .pause_container(ctx(), &PauseContainerRequest::new())
        .await
        .expect_err("PauseContainer is not implemented");
    match err {
        ttrpc::Error::RpcStatus(status) => {
            assert_eq!(status.code(), ttrpc::Code::UNIMPLEMENTED, "{status:?}");
            assert!(status.message().contains("/grpc.AgentService/PauseContainer"), "{status:?}");
        }
        other => panic!("expected an RPC status, got {other:?}"),
    }

    server.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------
// Wire encoding
// ---------------------------------------------------------------------------

const VARINT: u32 = 0;
const LEN: u32 = 2;

/// (field number, wire type) of every top-level field, in encoding order.
fn wire_fields(bytes: &[u8]) -> Vec<(u32, u32)> {
    let mut is = CodedInputStream::from_bytes(bytes);
    let mut out = Vec::new();
    while let Some(tag) = is.read_raw_tag_or_eof().expect("tag") {
        let (number, wire_type) = (tag >> 3, tag & 7);
        out.push((number, wire_type));
        is.skip_field(protocols::protobuf::rt::WireType::new(wire_type).expect("wire type")).expect("skip");
    }
    out
}

#[test]
fn create_container_request_matches_hand_encoding() {
    let req = CreateContainerRequest {
        container_id: "abc".to_string(),
        exec_id: "e".to_string(),
        sandbox_pidns: true,
        stdin_port: 5,
        stderr_port: 300,
        ..Default::default()
    };
    let want: &[u8] = &[
        0x0a, 0x03, b'a', b'b', b'c', // 1: container_id
        0x12, 0x01, b'e', // 2: exec_id
        0x38, 0x01, // 7: sandbox_pidns
        0x48, 0x05, // 9: stdin_port
        0x58, 0xac, 0x02, // 11: stderr_port = 300
    ];
    assert_eq!(req.write_to_bytes().unwrap(), want);
    assert_eq!(CreateContainerRequest::parse_from_bytes(want).unwrap(), req);
}

#[test]
fn create_container_request_field_numbers() {
    let req = CreateContainerRequest {
        container_id: "c".into(),
        exec_id: "e".into(),
        string_user: Some(StringUser::new()).into(),
        devices: vec![Device::new()],
        storages: vec![Storage::new()],
        OCI: Some(protocols::oci::Spec::new()).into(),
        sandbox_pidns: true,
        shared_mounts: vec![protocols::agent::SharedMount::new()],
        stdin_port: 1,
        stdout_port: 2,
        stderr_port: 3,
        ..Default::default()
    };
    let got = wire_fields(&req.write_to_bytes().unwrap());
    let want = vec![
        (1, LEN),
        (2, LEN),
        (3, LEN),
        (4, LEN),
        (5, LEN),
        (6, LEN),
        (7, VARINT),
        (8, LEN),
        (9, VARINT),
        (10, VARINT),
        (11, VARINT),
    ];
    assert_eq!(got, want);
}

#[test]
fn exec_process_request_field_numbers() {
    let req = ExecProcessRequest {
        container_id: "c".into(),
        exec_id: "e".into(),
        string_user: Some(StringUser::new()).into(),
        process: Some(protocols::oci::Process::new()).into(),
        stdin_port: 1,
        stdout_port: 2,
        stderr_port: 3,
        ..Default::default()
    };
    let got = wire_fields(&req.write_to_bytes().unwrap());
    let want = vec![(1, LEN), (2, LEN), (3, LEN), (4, LEN), (5, VARINT), (6, VARINT), (7, VARINT)];
    assert_eq!(got, want);
}

#[test]
fn storage_and_fs_group_field_numbers() {
    let storage = Storage {
        driver: "virtio-blk".into(),
        driver_options: vec!["o".into()],
        source: "/dev/vda".into(),
        fstype: "ext4".into(),
        options: vec!["ro".into()],
        mount_point: "/run/x".into(),
        fs_group: Some(FSGroup {
            group_id: 1000,
            group_change_policy: protocols::types::FSGroupChangePolicy::OnRootMismatch.into(),
            ..Default::default()
        })
        .into(),
        shared: true,
        ..Default::default()
    };
    let bytes = storage.write_to_bytes().unwrap();
    let want: Vec<(u32, u32)> = (1..=7).map(|n| (n, LEN)).chain([(8, VARINT)]).collect();
    assert_eq!(wire_fields(&bytes), want);

    // FSGroup starts at field 2 (Kata never used 1).
    let group = FSGroup {
        group_id: 1000,
        group_change_policy: protocols::types::FSGroupChangePolicy::OnRootMismatch.into(),
        ..Default::default()
    };
    assert_eq!(
        group.write_to_bytes().unwrap(),
        [0x10, 0xe8, 0x07, 0x18, 0x01] // 2: 1000, 3: OnRootMismatch
    );
}

#[test]
fn device_field_numbers() {
    let dev = Device {
        id: "0000:00:02.0".into(),
        type_: "blk".into(),
        vm_path: "/dev/vdb".into(),
        container_path: "/dev/xda".into(),
        options: vec!["x".into()],
        ..Default::default()
    };
    let want: Vec<(u32, u32)> = (1..=5).map(|n| (n, LEN)).collect();
    assert_eq!(wire_fields(&dev.write_to_bytes().unwrap()), want);
}

#[test]
fn guest_details_response_field_numbers() {
    let details = AgentDetails {
        version: "1".into(),
        init_daemon: true,
        device_handlers: vec!["blk".into()],
        storage_handlers: vec!["local".into()],
        supports_seccomp: true,
        extra_features: vec!["x".into()],
        ..Default::default()
    };
    assert_eq!(
        wire_fields(&details.write_to_bytes().unwrap()),
        vec![(1, LEN), (2, VARINT), (3, LEN), (4, LEN), (5, VARINT), (6, LEN)]
    );

    let resp = GuestDetailsResponse {
        mem_block_size_bytes: 1 << 27,
        agent_details: Some(details).into(),
        support_mem_hotplug_probe: true,
        ..Default::default()
    };
    let bytes = resp.write_to_bytes().unwrap();
    assert_eq!(wire_fields(&bytes), vec![(1, VARINT), (2, LEN), (3, VARINT)]);
    // 1 << 27 as a varint after tag 0x08.
    assert_eq!(&bytes[..5], &[0x08, 0x80, 0x80, 0x80, 0x40]);
    assert_eq!(GuestDetailsResponse::parse_from_bytes(&bytes).unwrap(), resp);
}

#[test]
fn odd_numberings_kept_from_kata() {
    // ReseedRandomDevRequest.data is field 2.
    let req = ReseedRandomDevRequest { data: vec![0xff], ..Default::default() };
    assert_eq!(req.write_to_bytes().unwrap(), [0x12, 0x01, 0xff]);

    // SetGuestDateTimeRequest: Sec = 1, Usec = 2, both int64.
    let req = SetGuestDateTimeRequest { Sec: -1, Usec: 7, ..Default::default() };
    let mut want = vec![0x08];
    want.extend([0xff; 9]);
    want.push(0x01);
    want.extend([0x10, 0x07]);
    assert_eq!(req.write_to_bytes().unwrap(), want);

    // GetDiagnosticDataRequest: log_type = 1, container_id = 2.
    let req = GetDiagnosticDataRequest { log_type: "t".into(), container_id: "c".into(), ..Default::default() };
    assert_eq!(req.write_to_bytes().unwrap(), [0x0a, 0x01, b't', 0x12, 0x01, b'c']);

    // proto3 `optional` fields are sent even when they hold the default.
    let cfg =
        MemAgentMemcgConfig { disabled: Some(false), eviction_run_aging_count_min: Some(3), ..Default::default() };
    assert_eq!(cfg.write_to_bytes().unwrap(), [0x08, 0x00, 0x38, 0x03]);
}

#[test]
fn health_messages_encoding() {
    let mut resp = HealthCheckResponse::new();
    resp.set_status(ServingStatus::SERVING);
    assert_eq!(resp.write_to_bytes().unwrap(), [0x08, 0x01]);

    let req = CheckRequest { service: "a".into(), ..Default::default() };
    assert_eq!(req.write_to_bytes().unwrap(), [0x0a, 0x01, b'a']);

    let v = VersionCheckResponse { grpc_version: "g".into(), agent_version: "a".into(), ..Default::default() };
    assert_eq!(v.write_to_bytes().unwrap(), [0x0a, 0x01, b'g', 0x12, 0x01, b'a']);
}

#[test]
fn network_types_field_numbers() {
    use protocols::types::{IPAddress, IPFamily, Interface, Route};
    let iface = Interface {
        device: "eth0".into(),
        name: "eth0".into(),
        IPAddresses: vec![IPAddress::new()],
        mtu: 1500,
        hwAddr: "02:00:00:00:00:01".into(),
        devicePath: "02/00".into(),
        type_: "veth".into(),
        raw_flags: 1,
        ..Default::default()
    };
    assert_eq!(
        wire_fields(&iface.write_to_bytes().unwrap()),
        vec![(1, LEN), (2, LEN), (3, LEN), (4, VARINT), (5, LEN), (6, LEN), (7, LEN), (8, VARINT)]
    );

    let route = Route {
        dest: "0.0.0.0/0".into(),
        gateway: "10.0.0.1".into(),
        device: "eth0".into(),
        source: "10.0.0.2".into(),
        scope: 200,
        family: IPFamily::v6.into(),
        flags: 4,
        ..Default::default()
    };
    assert_eq!(
        wire_fields(&route.write_to_bytes().unwrap()),
        vec![(1, LEN), (2, LEN), (3, LEN), (4, LEN), (5, VARINT), (6, VARINT), (7, VARINT)]
    );
}
