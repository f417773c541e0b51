//! `pgtrail.v1.History`: the CLI's questions, answered from the store on a
//! blocking thread (sled reads block).

use pgtrail_proto::pb::{self, history_server::History as HistoryApi};
use tonic::{Request, Response, Status};

use crate::query::{History, QueryError};

/// Serves the CLI's questions.
#[derive(Debug, Clone)]
pub struct HistoryService {
    history: History,
}

impl HistoryService {
    /// A service answering from `history`.
    pub fn new(history: History) -> Self {
        Self { history }
    }

    async fn answer<T, F>(&self, f: F) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: FnOnce(&History) -> Result<T, QueryError> + Send + 'static,
    {
        let history = self.history.clone();
        tokio::task::spawn_blocking(move || f(&history))
            .await
            .map_err(|e| Status::internal(format!("query task failed: {e}")))?
            .map(Response::new)
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl HistoryApi for HistoryService {
    async fn hosts(
        &self,
        request: Request<pb::HostsRequest>,
    ) -> Result<Response<pb::HostsResponse>, Status> {
        let scope = request.into_inner().scope.unwrap_or_default();
        self.answer(move |h| {
            Ok(pb::HostsResponse {
                instances: h.hosts(&scope)?,
            })
        })
        .await
    }

    async fn peaks(
        &self,
        request: Request<pb::PeaksRequest>,
    ) -> Result<Response<pb::PeaksResponse>, Status> {
        let r = request.into_inner();
        let scope = r.scope.unwrap_or_default();
        let window = window(r.window)?;
        let by = pb::Dimension::try_from(r.by).unwrap_or(pb::Dimension::Unspecified);
        let bucket = r.bucket_us;
        self.answer(move |h| {
            Ok(pb::PeaksResponse {
                peaks: h.peaks(&scope, &window, by, bucket)?,
            })
        })
        .await
    }

    async fn episodes(
        &self,
        request: Request<pb::EpisodesRequest>,
    ) -> Result<Response<pb::EpisodesResponse>, Status> {
        let r = request.into_inner();
        let scope = r.scope.unwrap_or_default();
        let window = window(r.window)?;
        let kind = pb::EpisodeKind::try_from(r.kind)
            .ok()
            .filter(|k| *k != pb::EpisodeKind::Unspecified)
            .ok_or(QueryError::NoKind)?;
        let min = r.min_duration_us;
        let limit = r.limit;
        self.answer(move |h| h.episodes(&scope, &window, kind, min, limit))
            .await
    }

    async fn at(
        &self,
        request: Request<pb::AtRequest>,
    ) -> Result<Response<pb::AtResponse>, Status> {
        let r = request.into_inner();
        let scope = r.scope.unwrap_or_default();
        self.answer(move |h| {
            Ok(pb::AtResponse {
                instances: h.at(&scope, r.at_us)?,
            })
        })
        .await
    }

    async fn mem(
        &self,
        request: Request<pb::MemRequest>,
    ) -> Result<Response<pb::MemResponse>, Status> {
        let r = request.into_inner();
        let scope = r.scope.unwrap_or_default();
        let window = window(r.window)?;
        let top = r.top as usize;
        self.answer(move |h| {
            Ok(pb::MemResponse {
                instances: h.mem(&scope, &window, top)?,
            })
        })
        .await
    }

    async fn health(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let r = request.into_inner();
        let scope = r.scope.unwrap_or_default();
        let window = window(r.window)?;
        self.answer(move |h| {
            Ok(pb::HealthResponse {
                instances: h.health(&scope, &window)?,
            })
        })
        .await
    }

    async fn churn(
        &self,
        request: Request<pb::ChurnRequest>,
    ) -> Result<Response<pb::ChurnResponse>, Status> {
        let r = request.into_inner();
        let scope = r.scope.unwrap_or_default();
        let window = window(r.window)?;
        self.answer(move |h| {
            Ok(pb::ChurnResponse {
                instances: h.churn(&scope, &window)?,
            })
        })
        .await
    }

    async fn waits(
        &self,
        request: Request<pb::WaitsRequest>,
    ) -> Result<Response<pb::WaitsResponse>, Status> {
        let r = request.into_inner();
        let scope = r.scope.unwrap_or_default();
        let window = window(r.window)?;
        let top = r.top as usize;
        self.answer(move |h| {
            Ok(pb::WaitsResponse {
                waits: h.waits(&scope, &window, top)?,
            })
        })
        .await
    }
}

fn window(w: Option<pb::Window>) -> Result<pb::Window, Status> {
    w.ok_or_else(|| Status::invalid_argument("missing window"))
}
