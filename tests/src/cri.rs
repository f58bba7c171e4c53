//! A CRI client for the pod tests: kubelet's side of the Container Runtime Interface, spoken
//! to a private containerd's CRI plugin over its unix socket.
//!
//! No `crictl` and no registry exist on the build machine, so the tests are their own CRI
//! client: the `k8s-cri` crate's generated `runtime.v1` clients (containerd 1.6 serves v1
//! and v1alpha2 on the same socket; the v1 messages this build sends are the cri-api 0.25
//! ones plus fields 1.6 ignores) on a tonic channel whose connector dials the socket. The
//! calls are async; [`Cri::block_on`] runs them on the client's own single-threaded runtime so
//! the tests stay plain `#[test]` functions.

use std::future::Future;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why the CRI client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The client's runtime could not be built.
    #[error("cannot build the CRI client's runtime")]
    Runtime(#[source] std::io::Error),
    /// containerd's socket did not accept the gRPC connection.
    #[error("cannot connect to the CRI socket {}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A connection to a CRI runtime (see the module docs).
#[derive(Debug)]
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl Cri {
    /// Connects to the CRI socket `socket` (containerd's gRPC address).
    pub fn connect(socket: &Path) -> Result<Self, CriError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CriError::Runtime)?;
        let path = socket.to_owned();
        // The URI is required by tonic and ignored by the connector.
        let endpoint = Endpoint::from_static("http://[::]:50051");
        let channel = runtime
            .block_on(endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            })))
            .map_err(|source| CriError::Connect { socket: socket.to_owned(), source })?;
        Ok(Self { runtime, channel })
    }

    /// The RuntimeService client (pods, containers, exec).
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// The ImageService client.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs `call` (a client call) to completion.
    pub fn block_on<F: Future>(&self, call: F) -> F::Output {
        self.runtime.block_on(call)
    }
}
