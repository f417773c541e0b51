//! Answers to the questions the CLI asks, computed from the store.
//!
//! Long windows read the records maintained at ingest (minute rollups,
//! episodes); raw samples are read only for a single moment ([`at`]) or
//! the partial minutes at a window's edges ([`peaks`]).

mod at;
mod churn;
mod episodes;
mod fan_out;
mod health;
mod longest;
mod mem;
mod peaks;
mod scope;
mod waits;
pub mod window;

use std::sync::Arc;

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;
use thiserror::Error;

use crate::store::{InstanceRecord, Store, StoreError};

/// Why a question cannot be answered.
#[derive(Debug, Error)]
pub enum QueryError {
    /// No known instance runs on a named host.
    #[error("no instance on host {host:?} is known; known hosts: {known}")]
    UnknownHost {
        /// The host asked for.
        host: String,
        /// The hosts there are.
        known: String,
    },
    /// The window is empty or reversed.
    #[error("the window is empty: it ends before it starts")]
    BadWindow,
    /// A bucket that is not a whole number of minutes.
    #[error("a bucket must be a whole number of minutes, such as 1m, 1h or 1d")]
    BadBucket,
    /// A request named no episode kind.
    #[error("the request names no episode kind")]
    NoKind,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QueryError> for tonic::Status {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::UnknownHost { .. } => tonic::Status::not_found(err.to_string()),
            QueryError::BadWindow | QueryError::BadBucket | QueryError::NoKind => {
                tonic::Status::invalid_argument(err.to_string())
            }
            QueryError::Store(e) => tonic::Status::internal(error_chain(&e)),
        }
    }
}

/// `err` and its sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Answers questions about stored history.
#[derive(Clone)]
pub struct History {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

impl History {
    /// Questions over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The known instances in `scope`.
    pub fn hosts(&self, scope: &pb::Scope) -> Result<Vec<pb::InstanceSummary>, QueryError> {
        let mut out = Vec::new();
        for r in self.resolve(scope)? {
            let bounds = self.store.sample_bounds(r.id)?;
            out.push(pb::InstanceSummary {
                facts: self.store.facts_at(r.id, Micros::MAX)?,
                first_sample_us: bounds.map(|b| b.0),
                last_sample_us: bounds.map(|b| b.1),
                samples: r.samples,
                dropped: r.dropped,
                host: r.host,
                instance: r.instance,
            });
        }
        Ok(out)
    }

    /// The instances a scope names, ordered by host then instance.
    fn resolve(&self, scope: &pb::Scope) -> Result<Vec<InstanceRecord>, QueryError> {
        scope::resolve(self.store.instances()?, &scope.hosts)
    }

    /// The port an instance's facts give at `t`.
    fn port_at(&self, r: &InstanceRecord, t: Micros) -> Result<Option<u32>, QueryError> {
        Ok(self
            .store
            .facts_at(r.id, t)?
            .map(|f| f.port)
            .filter(|&p| p != 0))
    }
}

fn check_window(w: &pb::Window) -> Result<(), QueryError> {
    if w.from_us > w.to_us {
        return Err(QueryError::BadWindow);
    }
    Ok(())
}
