//! A containerd proxy snapshotter whose snapshots are ext4 images on loop devices: the test
//! stand-in for containerd's devmapper snapshotter, which this host cannot run (no
//! device-mapper).
//!
//! What it shares with devmapper is what the shim sees: `CreateTask`'s rootfs is one block
//! device, `{type: "ext4", source: "/dev/loopN", options: []}`, that the runtime must mount or
//! hand to a VM. containerd really unpacks images into it (Prepare, apply the layer, Commit) and
//! runs containers on it. Each active snapshot is a sparse ext4 image file — a fresh
//! `mkfs.ext4` (256 MiB unless [`LoopSnapshotter::start_with`] says otherwise) without parent,
//! else a sparse copy of the committed parent's image — bound read-write to a loop device; a
//! view binds its parent's image read-only (mount option `ro`; without parent, a fresh one);
//! Commit unbinds the device and keeps the file. Where devmapper shares blocks with thin
//! provisioning, this copies the file: fine for a busybox-sized image, not for large ones.
//!
//! It is served by [`LoopSnapshotter`] on a unix socket in a temp dir, from a thread with its
//! own tokio runtime; containerd knows it through
//! [`ContainerdOptions::proxy_snapshotters`](crate::ContainerdOptions::proxy_snapshotters) and
//! `ctr --snapshotter NAME` selects it. Dropping it stops the
//! server, unbinds every loop device and deletes the images: drop it after the containerd using
//! it, whose mounts may still hold a device (the kernel then unbinds it at the last unmount).
//!
//! Limits: metadata lives in memory and dies with the value (containerd restarted against a new
//! instance finds no snapshots); List ignores filters (containerd's metadata layer filters
//! itself); requests are served one at a time; no disk quota, no thin provisioning; every
//! active snapshot and view holds a loop device, of which the host has few (8 here, shared by
//! every test running). For tests only: nothing here is hardened for production.
//!
//! Needs root (`losetup`, util-linux) and `mkfs.ext4` (e2fsprogs); compiled with feature
//! `containerd-tests`, whose build also generates the gRPC code from `protos/`.

mod loop_dev;
mod store;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

pub use loop_dev::{backed_under, host_mounts_of, root_mount, LoopError};
pub use store::StoreError;

use api::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use api::snapshots::{
    CleanupRequest, CommitSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse, MountsRequest, MountsResponse,
    PrepareSnapshotRequest, PrepareSnapshotResponse, RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse,
    UpdateSnapshotRequest, UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest,
    ViewSnapshotResponse,
};
use store::Store;

/// The gRPC code generated from `protos/`, nested as containerd's packages (prost's paths
/// between packages are relative): `types::Mount`, `snapshots::*` (service, client, server).
pub mod api {
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::types;

    /// containerd's protobuf packages.
    pub mod containerd {
        /// `containerd.types`.
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        /// `containerd.services`.
        pub mod services {
            /// `containerd.services.snapshots`.
            pub mod snapshots {
                /// `containerd.services.snapshots.v1`.
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
}

/// The size of a new snapshot's filesystem (sparse: it costs what is written).
pub const DEFAULT_IMAGE_SIZE: u64 = 256 << 20;

/// Why the snapshotter could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoopSnapshotterError {
    /// The temp dir, the socket or the runtime could not be made.
    #[error("cannot set up the loop snapshotter: {what}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A running loop snapshotter; see the module docs.
#[derive(Debug)]
pub struct LoopSnapshotter {
    name: String,
    socket: PathBuf,
    images: PathBuf,
    store: Arc<Mutex<Store>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    dir: Option<TempDir>,
}

impl LoopSnapshotter {
    /// Starts a snapshotter that containerd will know as `name`, with [`DEFAULT_IMAGE_SIZE`].
    pub fn start(name: &str) -> Result<Self, LoopSnapshotterError> {
        Self::start_with(name, DEFAULT_IMAGE_SIZE)
    }

    /// Starts one whose new filesystems are `image_size` bytes. Returns once the socket listens.
    pub fn start_with(name: &str, image_size: u64) -> Result<Self, LoopSnapshotterError> {
        let setup = |what| move |source| LoopSnapshotterError::Setup { what, source };
        let dir = tempfile::Builder::new().prefix("wisp-loopsnap-").tempdir().map_err(setup("temp dir"))?;
        let images = dir.path().join("images");
        std::fs::create_dir(&images).map_err(setup("images dir"))?;
        let socket = dir.path().join("snapshots.sock");
        // Bound here, so containerd may connect as soon as `start` returns.
        let listener = UnixListener::bind(&socket).map_err(setup("socket"))?;
        listener.set_nonblocking(true).map_err(setup("socket"))?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(setup("tokio runtime"))?;
        let store = Arc::new(Mutex::new(Store::new(images.clone(), image_size)));
        let service = SnapshotsServer::new(Service { store: Arc::clone(&store) });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = std::thread::Builder::new()
            .name(format!("loopsnap-{name}"))
            .spawn(move || serve(runtime, listener, service, stopped))
            .map_err(setup("server thread"))?;
        Ok(Self {
            name: name.to_owned(),
            socket,
            images,
            store,
            shutdown: Some(shutdown),
            server: Some(server),
            dir: Some(dir),
        })
    }

    /// The name containerd knows it by (`ctr --snapshotter NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gRPC socket (the proxy plugin's `address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The directory of the image files.
    pub fn images(&self) -> &Path {
        &self.images
    }

    /// Loop devices bound to this snapshotter's images now, as the kernel reports them
    /// (`/sys/block/loop*/loop/backing_file`), not as its bookkeeping believes.
    pub fn attached(&self) -> Vec<PathBuf> {
        backed_under(&self.images)
    }

    /// Loop devices bound to active snapshots and views, per the snapshotter's own records.
    pub fn recorded(&self) -> Vec<PathBuf> {
        lock(&self.store).devices()
    }

    /// Stops the server, unbinds every loop device, deletes the images; idempotent.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        lock(&self.store).detach_all();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for LoopSnapshotter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves until `stopped` fires (or its sender is dropped); then drops the runtime, which
/// cancels the connections containerd keeps open instead of waiting for it to close them.
fn serve(
    runtime: tokio::runtime::Runtime,
    listener: UnixListener,
    service: SnapshotsServer<Service>,
    stopped: oneshot::Receiver<()>,
) {
    runtime.block_on(async move {
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => return eprintln!("loop snapshotter: cannot listen: {e}"),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let _ = stopped.await;
        server.abort();
    });
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// containerd's `errdefs` read these codes back as NotFound, AlreadyExists, ...
fn status(error: StoreError) -> Status {
    let message = error.to_string();
    match error {
        StoreError::NotFound(_) => Status::not_found(message),
        StoreError::AlreadyExists(_) => Status::already_exists(message),
        StoreError::FailedPrecondition(_) => Status::failed_precondition(message),
        StoreError::InvalidArgument(_) => Status::invalid_argument(message),
        StoreError::Io { .. } | StoreError::Loop(_) => Status::internal(format!(
            "{message}: {}",
            std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default()
        )),
    }
}

/// The gRPC face of the [`Store`].
#[derive(Debug)]
struct Service {
    store: Arc<Mutex<Store>>,
}

impl Service {
    /// Runs `op` on the store off the runtime's thread (it forks `losetup`, `mkfs`, `cp`).
    async fn run<T, F>(&self, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || op(&mut lock(&store)))
            .await
            .map_err(|e| Status::internal(format!("snapshot operation panicked: {e}")))?
            .map_err(status)
    }
}

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(&self, r: Request<PrepareSnapshotRequest>) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let PrepareSnapshotRequest { key, parent, labels, .. } = r.into_inner();
        let mounts = self.run(move |s| s.prepare(&key, &parent, labels)).await?;
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    async fn view(&self, r: Request<ViewSnapshotRequest>) -> Result<Response<ViewSnapshotResponse>, Status> {
        let ViewSnapshotRequest { key, parent, labels, .. } = r.into_inner();
        let mounts = self.run(move |s| s.view(&key, &parent, labels)).await?;
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(&self, r: Request<MountsRequest>) -> Result<Response<MountsResponse>, Status> {
        let key = r.into_inner().key;
        let mounts = self.run(move |s| s.mounts(&key)).await?;
        Ok(Response::new(MountsResponse { mounts }))
    }

    async fn commit(&self, r: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let CommitSnapshotRequest { name, key, labels, .. } = r.into_inner();
        self.run(move |s| s.commit(&name, &key, labels)).await.map(Response::new)
    }

    async fn remove(&self, r: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = r.into_inner().key;
        self.run(move |s| s.remove(&key)).await.map(Response::new)
    }

    async fn stat(&self, r: Request<StatSnapshotRequest>) -> Result<Response<StatSnapshotResponse>, Status> {
        let key = r.into_inner().key;
        let info = self.run(move |s| s.stat(&key)).await?;
        Ok(Response::new(StatSnapshotResponse { info: Some(info) }))
    }

    async fn update(&self, r: Request<UpdateSnapshotRequest>) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let UpdateSnapshotRequest { info, update_mask, .. } = r.into_inner();
        let info = info.ok_or_else(|| Status::invalid_argument("update without info"))?;
        let mask = update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self.run(move |s| s.update(info, &mask)).await?;
        Ok(Response::new(UpdateSnapshotResponse { info: Some(info) }))
    }

    type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListSnapshotsResponse, Status>>>;

    async fn list(&self, _: Request<ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let infos = self.run(|s| Ok(s.list())).await?;
        // Batches, like containerd's own service, so no message nears gRPC's size limit.
        let batches: Vec<_> = infos.chunks(100).map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() })).collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(&self, r: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let key = r.into_inner().key;
        let (size, inodes) = self.run(move |s| s.usage(&key)).await?;
        Ok(Response::new(UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        // Nothing to reclaim: Remove deletes the image right away.
        Ok(Response::new(()))
    }
}

/// The contract through the real gRPC server, without containerd: needs root (loop devices,
/// mounts), like every test of feature `containerd-tests`.
#[cfg(test)]
mod tests {
    use std::fs;

    use nix::mount::{mount, umount, MsFlags};
    use tonic::Code;

    use super::api::snapshots::snapshots_client::SnapshotsClient;
    use super::api::snapshots::{Info, Kind};
    use super::api::types::Mount;
    use super::*;
    use crate::cri::unix_channel;

    /// containerd's side, one blocking call at a time.
    struct Client {
        runtime: tokio::runtime::Runtime,
        client: SnapshotsClient<tonic::transport::Channel>,
    }

    impl Client {
        fn connect(socket: &Path) -> Self {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let client = SnapshotsClient::new(runtime.block_on(unix_channel(socket)).expect("connect"));
            Self { runtime, client }
        }

        fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, Status> {
            let request = PrepareSnapshotRequest { key: key.into(), parent: parent.into(), ..Default::default() };
            Ok(self.runtime.block_on(self.client.prepare(request))?.into_inner().mounts)
        }

        fn view(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, Status> {
            let request = ViewSnapshotRequest { key: key.into(), parent: parent.into(), ..Default::default() };
            Ok(self.runtime.block_on(self.client.view(request))?.into_inner().mounts)
        }

        fn mounts(&mut self, key: &str) -> Result<Vec<Mount>, Status> {
            let request = MountsRequest { key: key.into(), ..Default::default() };
            Ok(self.runtime.block_on(self.client.mounts(request))?.into_inner().mounts)
        }

        fn commit(&mut self, name: &str, key: &str) -> Result<(), Status> {
            let request = CommitSnapshotRequest { name: name.into(), key: key.into(), ..Default::default() };
            self.runtime.block_on(self.client.commit(request)).map(drop)
        }

        fn remove(&mut self, key: &str) -> Result<(), Status> {
            let request = RemoveSnapshotRequest { key: key.into(), ..Default::default() };
            self.runtime.block_on(self.client.remove(request)).map(drop)
        }

        fn stat(&mut self, key: &str) -> Result<Info, Status> {
            let request = StatSnapshotRequest { key: key.into(), ..Default::default() };
            Ok(self.runtime.block_on(self.client.stat(request))?.into_inner().info.unwrap_or_default())
        }

        /// Sets `labels` on `name` through the mask `paths`; returns the labels after.
        fn update(
            &mut self,
            name: &str,
            labels: &[(&str, &str)],
            paths: &[&str],
        ) -> Result<Vec<(String, String)>, Status> {
            let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let info = Info { name: name.into(), labels, ..Default::default() };
            let update_mask = Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() });
            let request = UpdateSnapshotRequest { info: Some(info), update_mask, ..Default::default() };
            let info = self.runtime.block_on(self.client.update(request))?.into_inner().info.unwrap_or_default();
            let mut labels: Vec<_> = info.labels.into_iter().collect();
            labels.sort();
            Ok(labels)
        }

        fn list(&mut self) -> Result<Vec<String>, Status> {
            self.runtime.block_on(async {
                let mut stream = self.client.list(ListSnapshotsRequest::default()).await?.into_inner();
                let mut names = Vec::new();
                while let Some(batch) = stream.message().await? {
                    names.extend(batch.info.into_iter().map(|i| i.name));
                }
                Ok(names)
            })
        }

        fn usage(&mut self, key: &str) -> Result<UsageResponse, Status> {
            let request = UsageRequest { key: key.into(), ..Default::default() };
            Ok(self.runtime.block_on(self.client.usage(request))?.into_inner())
        }
    }

    fn code<T>(result: Result<T, Status>) -> Code {
        result.err().map_or(Code::Ok, |s| s.code())
    }

    /// Mounts the first of `mounts` on a temp dir, runs `f` in it, unmounts.
    fn in_mount<T>(mounts: &[Mount], f: impl FnOnce(&Path) -> T) -> T {
        let m = &mounts[0];
        let dir = tempfile::tempdir().expect("mount point");
        let flags = if m.options.iter().any(|o| o == "ro") { MsFlags::MS_RDONLY } else { MsFlags::empty() };
        mount(Some(m.source.as_str()), dir.path(), Some(m.r#type.as_str()), flags, None::<&str>).expect("mount");
        let out = f(dir.path());
        umount(dir.path()).expect("umount");
        out
    }

    #[test]
    fn snapshots_follow_containerds_contract_on_loop_devices() -> Result<(), Status> {
        let mut snapshotter = LoopSnapshotter::start_with("contract", 32 << 20).expect("start");
        let images = snapshotter.images().to_owned();
        let mut client = Client::connect(snapshotter.socket());

        // A fresh filesystem on a read-write loop device.
        let mounts = client.prepare("a", "")?;
        assert_eq!(mounts.len(), 1);
        assert_eq!((mounts[0].r#type.as_str(), mounts[0].options.len()), ("ext4", 0), "{mounts:?}");
        assert!(mounts[0].source.starts_with("/dev/loop"), "{mounts:?}");
        assert_eq!(snapshotter.attached(), vec![PathBuf::from(&mounts[0].source)]);
        assert_eq!(snapshotter.recorded(), snapshotter.attached());
        in_mount(&mounts, |root| fs::write(root.join("layer"), "base")).expect("write into a");

        assert_eq!(code(client.prepare("a", "")), Code::AlreadyExists);
        assert_eq!(code(client.prepare("b", "missing")), Code::NotFound);
        assert_eq!(code(client.prepare("b", "a")), Code::InvalidArgument, "an active parent");

        client.commit("base", "a")?;
        assert_eq!(code(client.commit("base", "a")), Code::AlreadyExists);
        assert!(snapshotter.attached().is_empty(), "commit unbinds: {:?}", snapshotter.attached());
        assert_eq!(client.stat("base")?.kind(), Kind::Committed);
        assert_eq!(code(client.stat("a")), Code::NotFound);
        assert_eq!(code(client.mounts("base")), Code::FailedPrecondition);

        // A child is a copy: it sees the parent's file, and its writes stay its own.
        let child = client.prepare("child", "base")?;
        let seen = in_mount(&child, |root| {
            fs::write(root.join("child-only"), "x").expect("write into child");
            fs::read_to_string(root.join("layer")).expect("the parent's file")
        });
        assert_eq!(seen, "base");
        let view = client.view("v", "base")?;
        assert_eq!(view[0].options, vec!["ro".to_owned()]);
        let (layer, leaked) =
            in_mount(&view, |root| (fs::read_to_string(root.join("layer")), root.join("child-only").exists()));
        assert_eq!(layer.expect("the view reads the parent"), "base");
        assert!(!leaked, "the child's write reached its parent");
        assert_eq!(client.mounts("v")?, view);
        assert_eq!(snapshotter.attached().len(), 2);
        assert_eq!(code(client.commit("c2", "v")), Code::FailedPrecondition, "a view does not commit");
        assert_eq!(code(client.remove("base")), Code::FailedPrecondition, "it has children");
        let empty = client.view("empty", "")?;
        let entries =
            in_mount(&empty, |root| fs::read_dir(root).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()));
        assert_eq!(entries.expect("read the empty view"), ["lost+found"]);
        client.remove("empty")?;

        // Labels: the mask names the ones to change; an empty value deletes.
        let labels = client.update("base", &[("x", "1"), ("y", "2")], &["labels.x"])?;
        assert_eq!(labels, vec![("x".to_owned(), "1".to_owned())]);
        assert!(client.update("base", &[], &["labels.x"])?.is_empty());
        assert_eq!(code(client.update("base", &[], &["parent"])), Code::InvalidArgument);

        assert_eq!(client.list()?, ["base", "child", "v"]);
        let usage = client.usage("base")?;
        assert!(usage.size > 0 && usage.size < 32 << 20, "sparse: {usage:?}");
        assert!(usage.inodes >= 12, "root, lost+found, the reserved ones, our file: {usage:?}");

        for key in ["child", "v", "base"] {
            client.remove(key)?;
        }
        assert!(snapshotter.attached().is_empty());
        assert_eq!(fs::read_dir(&images).map(Iterator::count).ok(), Some(0), "remove deletes the images");

        // Stopping unbinds what is still bound and deletes everything.
        client.prepare("left", "")?;
        assert_eq!(snapshotter.attached().len(), 1);
        snapshotter.stop();
        assert!(backed_under(&images).is_empty(), "{:?}", backed_under(&images));
        assert!(!images.exists());
        Ok(())
    }
}
