//! What can be wrong with a message that arrives.

use thiserror::Error;

/// A message broke the protocol: the peer sent something pgtrail cannot use.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// A required field was absent or empty.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field held a value outside its domain.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A session referred to a query text this stream never sent.
    #[error("session {pid} refers to query text {id:#x}, which this stream never sent")]
    UnknownQuery {
        /// The session's pid.
        pid: i32,
        /// The unknown reference.
        id: u64,
    },
    /// Messages came in the wrong order, e.g. a snapshot before the hello.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

impl From<ProtocolError> for tonic::Status {
    fn from(err: ProtocolError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}
