//! Streams snapshots to the collector from the on-disk spool.
//!
//! Every snapshot goes into the [`Spool`] first and leaves it only when the
//! collector acknowledges it. On each new stream the sender walks the spool
//! from its oldest record, with at most `window` snapshots sent ahead of
//! the acknowledgements; new snapshots join at the end. When the spool is
//! full its oldest snapshots are dropped and counted, and the count rides
//! on each instance's next snapshot as `dropped_before`, so history shows
//! the gap. On a stream, query texts and facts go once, and rows that did
//! not change since the instance's previous snapshot on it go as their
//! pids (`pgtrail_proto::unchanged`); a new stream starts whole again.

use std::sync::Arc;
use std::time::Duration;

use pgtrail_proto::intern::StreamEncoder;
use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb;
use pgtrail_proto::unchanged::SentRows;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::ingest::{self, Outgoing};
use crate::report::error_chain;
use crate::spool::{Cursor, Spool, Spooled};
use crate::stats::Stats;
use crate::wire::Head;

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a stopping agent waits for the last acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends snapshots to one collector.
#[derive(Debug)]
pub struct Sender {
    collector: String,
    hello: pb::Hello,
    window: usize,
    spool: Spool,
    stats: Arc<Stats>,
    /// Whether a spool write failure was logged (once per failure run).
    spool_failing: bool,
}

enum StreamEnd {
    /// The snapshot channel closed: the agent is stopping.
    Done,
    /// The stream broke; why, in plain words.
    Broken(String),
}

impl Sender {
    /// A sender to `collector` (a URL such as `http://host:7070`) that
    /// keeps snapshots in `spool` until acknowledged and sends at most
    /// `window` ahead of the acknowledgements.
    pub fn new(
        collector: String,
        hello: pb::Hello,
        window: usize,
        spool: Spool,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            collector,
            hello,
            window: window.max(1),
            spool,
            stats,
            spool_failing: false,
        }
    }

    /// Sends what arrives on `snapshots` until it closes, reconnecting with
    /// backoff; logs each outage once.
    pub async fn run(mut self, mut snapshots: mpsc::Receiver<Snapshot>) {
        let mut backoff = MIN_BACKOFF;
        let mut outage: Option<String> = None;
        loop {
            match self.stream(&mut snapshots, &mut outage, &mut backoff).await {
                StreamEnd::Done => break,
                StreamEnd::Broken(why) => {
                    if outage.as_ref() != Some(&why) {
                        warn!(collector = %self.collector, error = %why, waiting = self.spool.unacked(), "collector unavailable; snapshots wait in the spool and are sent on reconnect");
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
                        None => return self.close(),
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.close();
    }

    fn close(&mut self) {
        if let Err(e) = self.spool.close() {
            warn!(error = %error_chain(&e), "cannot flush the spool");
        }
        if self.spool.unacked() > 0 {
            info!(
                unacknowledged = self.spool.unacked(),
                "stopping with snapshots the collector has not acknowledged; they stay in the spool for the next run"
            );
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
        let (out, out_rx) = mpsc::channel::<Outgoing>(16);
        if out.send(Outgoing::Hello(self.hello.clone())).await.is_err() {
            return StreamEnd::Broken("stream closed".into());
        }
        let mut acks = match ingest::open(channel, ReceiverStream::new(out_rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return StreamEnd::Broken(status.message().to_string()),
        };
        if outage.take().is_some() {
            info!(collector = %self.collector, resending = self.spool.unacked(), "collector reachable again");
        }
        *backoff = MIN_BACKOFF;
        let mut encoder = StreamEncoder::default();
        let mut sent_rows = SentRows::default();
        // Everything unacknowledged goes again, oldest first.
        let mut cursor = Cursor::default();
        let mut in_flight = 0usize;
        let mut closing: Option<Instant> = None;
        loop {
            let can_send = in_flight < self.window && self.spool.has_next(&cursor);
            if let Some(deadline) = closing {
                if !can_send && in_flight == 0 || Instant::now() >= deadline {
                    tracing::debug!(
                        in_flight,
                        can_send,
                        unacked = self.spool.unacked(),
                        "stream done"
                    );
                    return StreamEnd::Done;
                }
            }
            let deadline = closing.unwrap_or_else(|| Instant::now() + MAX_BACKOFF);
            tokio::select! {
                permit = out.reserve(), if can_send => {
                    let Ok(permit) = permit else {
                        return StreamEnd::Broken("stream closed".into());
                    };
                    match self.spool.next(&mut cursor) {
                        Ok(Some(Spooled { snapshot, rows })) => {
                            let mut wire = encoder.encode(&snapshot);
                            let rows = rows.changed(&mut sent_rows, &mut wire).unwrap_or_else(|e| {
                                warn!(error = %e, "cannot compare a snapshot's rows; sending them all");
                                rows
                            });
                            let head = Box::new(Head::new(wire));
                            permit.send(Outgoing::Snapshot { head, rows });
                            in_flight += 1;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            warn!(error = %error_chain(&e), "cannot read the spool; skipping a record");
                        }
                    }
                }
                next = snapshots.recv(), if closing.is_none() => match next {
                    Some(snapshot) => self.enqueue(snapshot),
                    None => closing = Some(Instant::now() + DRAIN_TIMEOUT),
                },
                reply = acks.message() => match reply {
                    Ok(Some(msg)) => {
                        if self.acknowledge(msg) {
                            in_flight = in_flight.saturating_sub(1);
                        }
                    }
                    Ok(None) => return StreamEnd::Broken("the collector closed the stream".into()),
                    Err(status) => return StreamEnd::Broken(status.message().to_string()),
                },
                _ = tokio::time::sleep_until(deadline), if closing.is_some() => {}
            }
        }
    }

    fn enqueue(&mut self, snapshot: Snapshot) {
        match self.spool.push(snapshot) {
            Ok(evicted) => {
                self.spool_failing = false;
                if evicted.snapshots > 0 {
                    for _ in 0..evicted.snapshots {
                        self.stats.drop_one();
                    }
                    warn!(
                        dropped = evicted.snapshots,
                        spool_bytes = self.spool.bytes(),
                        "spool full: dropped the oldest unacknowledged snapshots"
                    );
                }
            }
            Err(e) => {
                self.stats.drop_one();
                if !std::mem::replace(&mut self.spool_failing, true) {
                    warn!(error = %error_chain(&e), "cannot write the spool: snapshots are dropped until it works again");
                }
            }
        }
    }

    /// Marks a snapshot acknowledged; whether it was one we were waiting for.
    fn acknowledge(&mut self, msg: pb::CollectorMessage) -> bool {
        let Some(pb::collector_message::Kind::Ack(ack)) = msg.kind else {
            return false;
        };
        match self.spool.ack(&ack.instance, ack.seq) {
            Ok(true) => {
                self.stats.ack();
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot remove an acknowledged spool segment");
                true
            }
        }
    }
}
