//! The pgtrail wire format.
//!
//! [`pb`] holds the code generated from `pgtrail/v1/pgtrail.proto`: the
//! `Ingest` and `History` services and their messages. Beside it live the
//! domain types the agent and collector work with ([`model`]), the
//! validation that turns what arrives into them ([`ProtocolError`]), and the
//! per-stream query-text interning ([`intern`]).
#![warn(missing_docs)]

pub mod codec;
pub mod error;
pub mod intern;
pub mod model;
pub mod received;
pub mod time;
pub mod unchanged;

pub use error::ProtocolError;

/// Code generated from `pgtrail/v1/pgtrail.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("pgtrail.v1");
}

/// The collector's side of `pgtrail.v1.Ingest`, taking each message as its
/// bytes ([`received::Received`]): the wire is that of [`pb`]'s.
#[allow(missing_docs, clippy::all)]
pub mod receive {
    include!(concat!(env!("OUT_DIR"), "/pgtrail.v1.Ingest.rs"));
}
