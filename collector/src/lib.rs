//! The pgtrail collector.
//!
//! Receives snapshots from agents over gRPC ([`service::IngestService`]),
//! keeps history in an embedded store ([`store`]), maintains what
//! long-range questions need as samples arrive ([`ingest`]), and answers
//! the CLI's questions ([`query`], served by [`service::HistoryService`]).
//! [`Collector`] ties these together for the binary and for `pgtrail
//! record`, which feeds it snapshots in-process.
#![warn(missing_docs)]
// Module docs link the private modules they describe: read them with
// `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod config;
mod error;
pub mod ingest;
pub mod query;
pub mod retention;
pub mod service;
pub mod store;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

pub use config::Config;
pub use error::CollectorError;
pub use ingest::Ingestor;
pub use query::History;
pub use retention::Retention;

use pgtrail_proto::pb::history_server::HistoryServer;
use pgtrail_proto::receive::ingest_server::IngestServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use crate::service::{HistoryService, IngestService, MAX_MESSAGE_BYTES};
use crate::store::{SledStore, Store};

/// An open collector: a store and the services over it.
#[derive(Debug, Clone)]
pub struct Collector {
    store: Arc<SledStore>,
    ingestor: Arc<Ingestor>,
    history: History,
}

impl Collector {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, CollectorError> {
        let store = Arc::new(SledStore::open(dir).map_err(|source| CollectorError::Open {
            path: dir.display().to_string(),
            source,
        })?);
        let dyn_store: Arc<dyn Store> = store.clone();
        Ok(Self {
            ingestor: Arc::new(Ingestor::new(dyn_store.clone())),
            history: History::new(dyn_store),
            store,
        })
    }

    /// Stores snapshots, for in-process agents.
    pub fn ingestor(&self) -> Arc<Ingestor> {
        self.ingestor.clone()
    }

    /// Answers questions in-process.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The store, for retention and tests.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Binds `addr` ("host:port"; port 0 picks a free one).
    pub async fn bind(addr: &str) -> Result<TcpListener, CollectorError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| CollectorError::Bind {
                addr: addr.to_string(),
                source,
            })
    }

    /// Serves `Ingest` and `History` on `listener` until `shutdown`
    /// resolves, then makes the store durable, open rollups included.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CollectorError> {
        let addr = listener.local_addr().ok();
        info!(addr = ?addr, "serving gRPC");
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let ingest = IngestServer::new(IngestService::new(self.ingestor.clone(), stopping))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let history = HistoryServer::new(HistoryService::new(self.history.clone()))
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .add_service(ingest)
            .add_service(history)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                shutdown.await;
                // End the agents' streams too; the server waits for them.
                let _ = stop.send(true);
            })
            .await?;
        self.store.persist_open()?;
        Ok(())
    }
}

/// Runs a collector as `config` says until `shutdown` resolves.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CollectorError> {
    let collector = Collector::open(&config.data)?;
    let listener = Collector::bind(&config.listen.to_string()).await?;
    info!(data = %config.data.display(), "store open");
    let expiring = config.retention.spawn(collector.store());
    let served = collector.serve(listener, shutdown).await;
    expiring.abort();
    served
}

/// Resolves on Ctrl-C or SIGTERM: what stops a collector, or `pgtrail
/// record`, cleanly.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
