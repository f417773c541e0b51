//! The agent's side of `Ingest.Stream`, with a codec that sends a
//! snapshot's rows as the spool encoded them.
//!
//! The generated `IngestClient` encodes each `pb::AgentMessage` whole; here
//! a snapshot travels as its stream [`Head`] around its [`Rows`], so the
//! rows (nearly all of its bytes) are copied, not encoded again. The bytes
//! on the wire are the same.

use pgtrail_proto::pb;
use prost::bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use tokio_stream::Stream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{GrpcMethod, Status};

use crate::wire::{Head, Rows};

/// `pb::AgentMessage.snapshot`.
const SNAPSHOT: u32 = 2;
/// `pb::AgentMessage.delta`.
const DELTA: u32 = 3;

/// One message of the agent's stream.
#[derive(Debug)]
pub enum Outgoing {
    /// The stream's first message.
    Hello(pb::Hello),
    /// A snapshot: its head for this stream and its rows (a `delta` when
    /// the head lists unchanged rows).
    Snapshot {
        /// Every field but the rows.
        head: Box<Head>,
        /// The sessions and processes.
        rows: Rows,
    },
}

impl Outgoing {
    /// Writes the `pb::AgentMessage`, without a length prefix.
    fn encode(self, buf: &mut impl BufMut) {
        match self {
            Outgoing::Hello(hello) => pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::Hello(hello)),
            }
            .encode_raw(buf),
            Outgoing::Snapshot { head, rows } => {
                let kind = if head.is_delta() { DELTA } else { SNAPSHOT };
                encode_key(kind, WireType::LengthDelimited, buf);
                encode_varint(head.encoded_len(&rows) as u64, buf);
                head.encode(&rows, buf);
            }
        }
    }
}

/// Opens the stream: `messages` go out, acknowledgements come back.
pub async fn open(
    channel: Channel,
    messages: impl Stream<Item = Outgoing> + Send + 'static,
) -> Result<tonic::Response<Streaming<pb::CollectorMessage>>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = tonic::Request::new(messages);
    request
        .extensions_mut()
        .insert(GrpcMethod::new("pgtrail.v1.Ingest", "Stream"));
    let path = PathAndQuery::from_static("/pgtrail.v1.Ingest/Stream");
    grpc.streaming(request, path, StreamCodec).await
}

/// Encodes [`Outgoing`], decodes `pb::CollectorMessage`.
#[derive(Debug, Clone, Copy, Default)]
struct StreamCodec;

impl Codec for StreamCodec {
    type Encode = Outgoing;
    type Decode = pb::CollectorMessage;
    type Encoder = StreamCodec;
    type Decoder = StreamCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for StreamCodec {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf);
        Ok(())
    }
}

impl Decoder for StreamCodec {
    type Item = pb::CollectorMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::CollectorMessage::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_what_prost_writes() {
        let snapshot = pb::Snapshot {
            instance: "main".into(),
            seq: 3,
            sampled_at_us: 1_700_000_000_000_000,
            queries: vec![pb::QueryText {
                id: 1,
                text: "select 1".into(),
            }],
            sessions: vec![pb::Session {
                pid: 10,
                query_id: Some(1),
                ..Default::default()
            }],
            processes: vec![pb::Process {
                pid: 10,
                title: "postgres: main".into(),
                ..Default::default()
            }],
            dropped_before: 2,
            sessions_total: Some(5),
            ..Default::default()
        };
        let rows = Rows::encode(&snapshot.sessions, &snapshot.processes);
        let out = Outgoing::Snapshot {
            head: Box::new(Head::new(snapshot.clone())),
            rows,
        };
        let mut buf = Vec::new();
        out.encode(&mut buf);
        let whole = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Snapshot(snapshot)),
        };
        assert_eq!(buf, whole.encode_to_vec());

        let hello = pb::Hello {
            agent_id: "h/1".into(),
            host: "h".into(),
            agent_version: "0".into(),
        };
        let mut buf = Vec::new();
        Outgoing::Hello(hello.clone()).encode(&mut buf);
        let whole = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(hello)),
        };
        assert_eq!(buf, whole.encode_to_vec());
    }
}
