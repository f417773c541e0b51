//! Streams snapshots to the collector and keeps what it has not yet
//! acknowledged.
//!
//! Snapshots wait in a bounded queue, oldest first, until the collector
//! acknowledges them. On a new stream every waiting snapshot is sent again
//! (the collector stores a redelivery once). When the queue is full the
//! oldest is dropped and counted, and the count rides on that instance's
//! next snapshot as `dropped_before`, so history shows the gap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use pgtrail_proto::intern::StreamEncoder;
use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb::{self, ingest_client::IngestClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::report::error_chain;
use crate::stats::Stats;

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a stopping agent waits for the last acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends snapshots to one collector.
#[derive(Debug)]
pub struct Sender {
    collector: String,
    hello: pb::Hello,
    capacity: usize,
    pending: VecDeque<Snapshot>,
    dropped: HashMap<String, u64>,
    stats: Arc<Stats>,
}

enum StreamEnd {
    /// The snapshot channel closed: the agent is stopping.
    Done,
    /// The stream broke; why, in plain words.
    Broken(String),
}

impl Sender {
    /// A sender to `collector` (a URL such as `http://host:7070`) that keeps
    /// at most `capacity` unacknowledged snapshots.
    pub fn new(collector: String, hello: pb::Hello, capacity: usize, stats: Arc<Stats>) -> Self {
        Self {
            collector,
            hello,
            capacity: capacity.max(1),
            pending: VecDeque::new(),
            dropped: HashMap::new(),
            stats,
        }
    }

    /// Sends what arrives on `snapshots` until it closes, reconnecting with
    /// backoff; logs each outage once.
    pub async fn run(mut self, mut snapshots: mpsc::Receiver<Snapshot>) {
        let mut backoff = MIN_BACKOFF;
        let mut outage: Option<String> = None;
        loop {
            match self.stream(&mut snapshots, &mut outage, &mut backoff).await {
                StreamEnd::Done => return,
                StreamEnd::Broken(why) => {
                    if outage.as_ref() != Some(&why) {
                        warn!(collector = %self.collector, error = %why, waiting = self.pending.len(), "collector unavailable; snapshots wait in the queue and are sent on reconnect");
                        outage = Some(why);
                    }
                }
            }
            let pause = tokio::time::sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    next = snapshots.recv() => match next {
                        Some(s) => self.enqueue(s),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn stream(
        &mut self,
        snapshots: &mut mpsc::Receiver<Snapshot>,
        outage: &mut Option<String>,
        backoff: &mut Duration,
    ) -> StreamEnd {
        let endpoint = match Endpoint::from_shared(self.collector.clone()) {
            Ok(e) => e.connect_timeout(Duration::from_secs(5)),
            Err(e) => return StreamEnd::Broken(format!("invalid collector URL: {e}")),
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return StreamEnd::Broken(error_chain(&e)),
        };
        let mut client = IngestClient::new(channel);
        let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(64);
        let hello = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(self.hello.clone())),
        };
        if out.send(hello).await.is_err() {
            return StreamEnd::Broken("stream closed".into());
        }
        let mut acks = match client.stream(ReceiverStream::new(out_rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return StreamEnd::Broken(status.message().to_string()),
        };
        if outage.take().is_some() {
            info!(collector = %self.collector, resending = self.pending.len(), "collector reachable again");
        }
        *backoff = MIN_BACKOFF;
        let mut encoder = StreamEncoder::default();
        // Everything unacknowledged goes again, oldest first. The channel
        // is bounded, so this also paces us to the collector.
        for snapshot in self.pending.iter() {
            let wire = wrap(encoder.encode(snapshot));
            if out.send(wire).await.is_err() {
                return StreamEnd::Broken("stream closed".into());
            }
        }
        loop {
            tokio::select! {
                next = snapshots.recv() => {
                    let Some(snapshot) = next else {
                        self.drain(&mut acks).await;
                        return StreamEnd::Done;
                    };
                    self.enqueue(snapshot);
                    let newest = self.pending.back().expect("just queued");
                    if out.send(wrap(encoder.encode(newest))).await.is_err() {
                        return StreamEnd::Broken("stream closed".into());
                    }
                }
                reply = acks.message() => match reply {
                    Ok(Some(msg)) => self.acknowledge(msg),
                    Ok(None) => return StreamEnd::Broken("the collector closed the stream".into()),
                    Err(status) => return StreamEnd::Broken(status.message().to_string()),
                },
            }
        }
    }

    /// Waits a little for acknowledgements of what was sent.
    async fn drain(&mut self, acks: &mut tonic::Streaming<pb::CollectorMessage>) {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while !self.pending.is_empty() {
                match acks.message().await {
                    Ok(Some(msg)) => self.acknowledge(msg),
                    _ => return,
                }
            }
        })
        .await;
        if !self.pending.is_empty() {
            warn!(
                unacknowledged = self.pending.len(),
                "stopping with snapshots the collector has not acknowledged"
            );
        }
    }

    fn enqueue(&mut self, mut snapshot: Snapshot) {
        if let Some(n) = self.dropped.remove(&snapshot.instance) {
            snapshot.dropped_before += n;
        }
        if self.pending.len() >= self.capacity {
            if let Some(oldest) = self.pending.pop_front() {
                self.stats.drop_one();
                warn!(instance = %oldest.instance, seq = oldest.seq, "queue full: dropped the oldest unacknowledged snapshot");
                *self.dropped.entry(oldest.instance).or_default() += 1;
            }
        }
        self.pending.push_back(snapshot);
    }

    fn acknowledge(&mut self, msg: pb::CollectorMessage) {
        let Some(pb::collector_message::Kind::Ack(ack)) = msg.kind else {
            return;
        };
        if let Some(i) = self
            .pending
            .iter()
            .position(|s| s.seq == ack.seq && s.instance == ack.instance)
        {
            self.pending.remove(i);
            self.stats.ack();
        }
    }
}

fn wrap(snapshot: pb::Snapshot) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Snapshot(snapshot)),
    }
}
