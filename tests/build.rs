//! Generates the loop snapshotter's gRPC server (containerd's snapshot service, `protos/`) with
//! tonic-prost-build, only when feature `containerd-tests` is on: plain builds need no `protoc`.

fn main() {
    #[cfg(feature = "containerd-tests")]
    snapshots::generate();
}

#[cfg(feature = "containerd-tests")]
mod snapshots {
    /// containerd's snapshot service and the mount type it returns; the `google/protobuf`
    /// imports map onto `prost-types` and are not generated.
    const PROTOS: &[&str] =
        &["protos/containerd/services/snapshots/v1/snapshots.proto", "protos/containerd/types/mount.proto"];

    pub fn generate() {
        println!("cargo:rerun-if-changed=protos");
        if let Err(e) =
            tonic_prost_build::configure().build_client(true).build_server(true).compile_protos(PROTOS, &["protos"])
        {
            panic!("cannot generate the snapshot service from protos/ (is protoc installed? `make deps`): {e}");
        }
    }
}
