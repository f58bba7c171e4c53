//! `grpc.Health`: the first thing a runtime calls, so it does nothing but answer.

use protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use protocols::health_ttrpc::Health;
use protocols::ttrpc::{self, asynchronous::TtrpcContext};

/// The protocol revision Kata's runtime expects in Version.
const API_VERSION: &str = "0.0.1";

#[derive(Debug)]
pub struct HealthService;

#[async_trait::async_trait]
impl Health for HealthService {
    async fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        let mut r = HealthCheckResponse::new();
        r.status = ServingStatus::SERVING.into();
        Ok(r)
    }

    async fn version(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<VersionCheckResponse> {
        let mut r = VersionCheckResponse::new();
        r.grpc_version = API_VERSION.to_owned();
        r.agent_version = env!("CARGO_PKG_VERSION").to_owned();
        Ok(r)
    }
}
