//! `pgtrail.v1.Ingest`: one stream per agent; every snapshot is
//! acknowledged once it is durable.

use std::sync::Arc;

use pgtrail_proto::intern::StreamDecoder;
use pgtrail_proto::pb;
use pgtrail_proto::receive::ingest_server::Ingest;
use pgtrail_proto::received::Received;
use pgtrail_proto::ProtocolError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::ingest::{Ingestor, Outcome};
use crate::query::error_chain;

/// Serves agents' streams.
#[derive(Debug, Clone)]
pub struct IngestService {
    ingestor: Arc<Ingestor>,
    stopping: watch::Receiver<bool>,
}

impl IngestService {
    /// A service storing through `ingestor`. When `stopping` turns true,
    /// every stream stops reading, acknowledges what it stored and ends, so
    /// the server can shut down while agents are connected.
    pub fn new(ingestor: Arc<Ingestor>, stopping: watch::Receiver<bool>) -> Self {
        Self { ingestor, stopping }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<Received>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "in-process".to_string(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let (acks, rx) = mpsc::channel(64);
        let ingestor = self.ingestor.clone();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            if let Err(status) = serve(&ingestor, &mut inbound, &acks, stopping).await {
                warn!(peer = %peer, error = %status.message(), "agent stream ended with an error");
                let _ = acks.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn serve(
    ingestor: &Arc<Ingestor>,
    inbound: &mut Streaming<Received>,
    acks: &mpsc::Sender<Result<pb::CollectorMessage, Status>>,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), Status> {
    use pb::agent_message::Kind;
    let hello = match inbound.message().await?.as_ref().map(decode).transpose()? {
        None => return Ok(()),
        Some(pb::AgentMessage {
            kind: Some(Kind::Hello(hello)),
        }) => hello,
        Some(_) => return Err(ProtocolError::Unexpected("a stream must open with a hello").into()),
    };
    if hello.host.is_empty() {
        return Err(ProtocolError::Missing("hello.host").into());
    }
    info!(host = %hello.host, agent = %hello.agent_id, version = %hello.agent_version, "agent connected");
    // Appends go on while earlier ones wait for the disk: the acker, a
    // task of its own (so that a busy reader never holds an ack back),
    // makes them durable and acknowledges them in order.
    let (appended, to_ack) = mpsc::channel::<pb::Ack>(PIPELINE);
    let acker = tokio::spawn(acknowledge(ingestor.clone(), to_ack, acks.clone()));
    let reader = async {
        let mut decoder = StreamDecoder::default();
        loop {
            let next = tokio::select! {
                next = inbound.message() => next?,
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let Some(received) = next else { break };
            // Where its rows lie, paired with them before the decoder
            // sorts them: the store keeps these bytes as they came.
            let (decoded, rows) = match decode(&received)?.kind {
                Some(Kind::Snapshot(wire)) => {
                    let rows = received.rows(&wire);
                    (decoder.decode(wire)?, rows)
                }
                Some(Kind::Delta(wire)) => {
                    let rows = received.rows(&wire);
                    (decoder.decode_delta(wire)?, rows)
                }
                Some(Kind::Hello(_)) => {
                    return Err(ProtocolError::Unexpected("a second hello").into())
                }
                None => return Err(ProtocolError::Missing("kind").into()),
            };
            let (instance, seq) = (decoded.snapshot.instance.clone(), decoded.snapshot.seq);
            let outcome = ingestor
                .append_decoded(&hello.host, decoded, rows.as_ref())
                .await
                .map_err(|e| Status::unavailable(error_chain(&e)))?;
            let ack = pb::Ack {
                instance,
                seq,
                duplicate: outcome == Outcome::Duplicate,
            };
            if appended.send(ack).await.is_err() {
                break;
            }
        }
        drop(appended);
        Ok::<(), Status>(())
    };
    let read = reader.await;
    let acked = acker.await.expect("acker panicked");
    read?;
    acked?;
    info!(host = %hello.host, agent = %hello.agent_id, "agent disconnected");
    Ok(())
}

/// The message `received` holds. One that does not parse is an internal
/// error in gRPC's terms, as prost's own codec reports it.
fn decode(received: &Received) -> Result<pb::AgentMessage, Status> {
    received
        .decode()
        .map_err(|e| Status::internal(e.to_string()))
}

/// Acknowledges the appends of one stream, in order, once durable. One
/// flush covers every append waiting when it starts: all of them are taken
/// at once, and streams share flushes (group commit).
async fn acknowledge(
    ingestor: Arc<Ingestor>,
    mut to_ack: mpsc::Receiver<pb::Ack>,
    acks: mpsc::Sender<Result<pb::CollectorMessage, Status>>,
) -> Result<(), Status> {
    let mut waiting = Vec::new();
    while to_ack.recv_many(&mut waiting, PIPELINE).await > 0 {
        ingestor
            .durable()
            .await
            .map_err(|e| Status::unavailable(error_chain(&e)))?;
        for ack in waiting.drain(..) {
            let message = pb::CollectorMessage {
                kind: Some(pb::collector_message::Kind::Ack(ack)),
            };
            if acks.send(Ok(message)).await.is_err() {
                return Ok(()); // the agent hung up
            }
        }
    }
    Ok(())
}

/// Snapshots appended but not yet acknowledged, per stream.
const PIPELINE: usize = 256;
