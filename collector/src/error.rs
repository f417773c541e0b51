//! Errors of the collector library.

use thiserror::Error;

use crate::store::StoreError;

/// Why the collector could not start or serve.
#[derive(Debug, Error)]
pub enum CollectorError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The configuration file could not be read.
    #[error("cannot read config file {path}")]
    ConfigFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store in {path} (is another pgtrail using it?)")]
    Open {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
