//! The Ingest and History services over real gRPC on 127.0.0.1:0, into a
//! real sled store: acknowledgements, redelivery, protocol errors.

mod common;

use std::time::Duration;

use pgtrail_collector::Collector;
use pgtrail_proto::intern::StreamEncoder;
use pgtrail_proto::model::{query_hash, Snapshot};
use pgtrail_proto::pb::{self, history_client::HistoryClient, ingest_client::IngestClient};
use pgtrail_proto::unchanged::SentRows;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use common::reopen_collector;

const T0: i64 = 1_790_000_000_000_000;

struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(dir: &std::path::Path) -> Server {
        let collector = reopen_collector(dir);
        let listener = Collector::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            collector
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server {
            url,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn snapshot(seq: u64, sessions: &[(i32, &str, &str)]) -> Snapshot {
    let mut s = Snapshot {
        instance: "5432".into(),
        seq,
        sampled_at: T0 + seq as i64 * 1_000_000,
        facts: Some(pb::InstanceFacts {
            port: 5432,
            version_num: 150004,
            max_connections: Some(100),
            superuser_reserved_connections: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (pid, state, query) in sessions {
        let id = query_hash(query);
        s.queries.insert(id, (*query).into());
        s.sessions.push(pb::Session {
            pid: *pid,
            backend_type: "client backend".into(),
            state: Some((*state).into()),
            query_id: Some(id),
            ..Default::default()
        });
    }
    s
}

fn hello() -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            agent_id: "test".into(),
            host: "db-test".into(),
            agent_version: "0".into(),
        })),
    }
}

fn wrap(s: pb::Snapshot) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Snapshot(s)),
    }
}

/// Sends `messages` on one stream and collects the replies until the
/// collector has answered `expect` times or ended the stream.
async fn exchange(
    url: &str,
    messages: Vec<pb::AgentMessage>,
    expect: usize,
) -> (Vec<pb::Ack>, Option<tonic::Status>) {
    let mut client = IngestClient::connect(url.to_string()).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let mut replies = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut acks = Vec::new();
    while acks.len() < expect {
        match tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await
            .expect("collector answers")
        {
            Ok(Some(pb::CollectorMessage {
                kind: Some(pb::collector_message::Kind::Ack(a)),
            })) => acks.push(a),
            Ok(_) => break,
            Err(status) => return (acks, Some(status)),
        }
    }
    drop(tx);
    (acks, None)
}

async fn samples_of(url: &str) -> u64 {
    let mut history = HistoryClient::connect(url.to_string()).await.unwrap();
    let hosts = history
        .hosts(pb::HostsRequest::default())
        .await
        .unwrap()
        .into_inner();
    hosts.instances.iter().map(|i| i.samples).sum()
}

#[tokio::test]
async fn a_redelivered_snapshot_is_acknowledged_but_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let first = snapshot(1, &[(10, "idle", "select 1")]);
    let mut enc = StreamEncoder::default();
    let messages = vec![hello(), wrap(enc.encode(&first)), wrap(enc.encode(&first))];
    let (acks, err) = exchange(&server.url, messages, 2).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(acks.len(), 2);
    assert_eq!((acks[0].seq, acks[0].duplicate), (1, false));
    assert_eq!((acks[1].seq, acks[1].duplicate), (1, true));

    // A new stream (an agent reconnecting) resends it once more.
    let mut enc = StreamEncoder::default();
    let (acks, _) = exchange(&server.url, vec![hello(), wrap(enc.encode(&first))], 1).await;
    assert!(acks[0].duplicate);
    assert_eq!(samples_of(&server.url).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn protocol_errors_end_the_stream_and_keep_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut enc = StreamEncoder::default();
    let good = wrap(enc.encode(&snapshot(1, &[(10, "idle", "select 1")])));
    let (acks, _) = exchange(&server.url, vec![hello(), good], 1).await;
    assert_eq!(acks.len(), 1);

    // A snapshot before the hello.
    let stray = wrap(StreamEncoder::default().encode(&snapshot(2, &[])));
    let (_, err) = exchange(&server.url, vec![stray], 1).await;
    let err = err.expect("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("hello"), "{}", err.message());

    // A reference to a query text this stream never sent.
    let mut wire = StreamEncoder::default().encode(&snapshot(3, &[(11, "idle", "select 2")]));
    wire.queries.clear();
    let (_, err) = exchange(&server.url, vec![hello(), wrap(wire)], 1).await;
    let err = err.expect("refused");
    assert!(err.message().contains("never sent"), "{}", err.message());

    assert_eq!(samples_of(&server.url).await, 1, "nothing stored was lost");
    server.stop().await;
}

/// The sessions `at` shows at `seq`'s sample: (pid, state).
async fn sessions_at(url: &str, seq: u64) -> Vec<(i32, String)> {
    let mut history = HistoryClient::connect(url.to_string()).await.unwrap();
    let at = history
        .at(pb::AtRequest {
            at_us: T0 + seq as i64 * 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut rows: Vec<_> = at.instances[0]
        .sessions
        .iter()
        .map(|s| (s.pid, s.state.clone().unwrap_or_default()))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn unchanged_rows_sent_as_pids_are_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let states = [
        [
            (10, "idle", "select 1"),
            (11, "active", "select 2"),
            (12, "idle", "select 3"),
        ],
        [
            (10, "idle", "select 1"),
            (11, "idle", "select 2"),
            (12, "idle", "select 3"),
        ],
        [
            (10, "active", "select 4"),
            (11, "idle", "select 2"),
            (12, "idle", "select 3"),
        ],
    ];
    let snapshots: Vec<_> = (1..)
        .zip(&states)
        .map(|(seq, s)| snapshot(seq, s))
        .collect();
    let messages = stream_of(&snapshots);
    for (i, m) in messages[1..].iter().enumerate() {
        match &m.kind {
            Some(pb::agent_message::Kind::Delta(wire)) => {
                assert!(i > 0, "the first goes whole");
                assert_eq!(wire.sessions.len(), 1, "one row changed");
            }
            _ => assert_eq!(i, 0, "later ones are deltas"),
        }
    }
    let (acks, err) = exchange(&server.url, messages, 3).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(acks.len(), 3);
    for (seq, sessions) in (1..).zip(&states) {
        let want: Vec<_> = sessions
            .iter()
            .map(|(p, s, _)| (*p, s.to_string()))
            .collect();
        assert_eq!(sessions_at(&server.url, seq).await, want, "sample {seq}");
    }

    // A delta on a new stream has nothing to refer to: refused, and what
    // was stored stays.
    let mut wire = StreamEncoder::default().encode(&snapshot(4, &states[2]));
    wire.unchanged_sessions = std::mem::take(&mut wire.sessions)
        .iter()
        .map(|s| s.pid)
        .collect();
    let delta = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Delta(wire.clone())),
    };
    let (_, err) = exchange(&server.url, vec![hello(), delta], 1).await;
    let err = err.expect("refused");
    assert!(
        err.message().contains("not in the previous snapshot"),
        "{}",
        err.message()
    );
    // Unchanged rows in a plain snapshot are refused too.
    let (_, err) = exchange(&server.url, vec![hello(), wrap(wire)], 1).await;
    assert!(err.expect("refused").message().contains("not a delta"));
    assert_eq!(samples_of(&server.url).await, 3);
    server.stop().await;
}

/// A stream's messages for `snapshots`, as the agent sends them.
fn stream_of(snapshots: &[Snapshot]) -> Vec<pb::AgentMessage> {
    let (mut enc, mut rows) = (StreamEncoder::default(), SentRows::default());
    let mut messages = vec![hello()];
    for s in snapshots {
        let mut wire = enc.encode(s);
        let kind = match rows.strip(&mut wire) {
            true => pb::agent_message::Kind::Delta(wire),
            false => pb::agent_message::Kind::Snapshot(wire),
        };
        messages.push(pb::AgentMessage { kind: Some(kind) });
    }
    messages
}

#[tokio::test]
async fn unchanged_rows_are_those_of_their_own_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    // Two agents claim the same instance and sample at the same moment;
    // the first one's sample 1 is stored, the second one's is a duplicate.
    let first = snapshot(1, &[(10, "idle", "select 1")]);
    let (acks, _) = exchange(&server.url, stream_of(std::slice::from_ref(&first)), 1).await;
    assert!(!acks[0].duplicate);
    let other = [
        snapshot(1, &[(10, "active", "select 2")]),
        snapshot(2, &[(10, "active", "select 2")]),
    ];
    let messages = stream_of(&other);
    assert!(matches!(
        messages[2].kind,
        Some(pb::agent_message::Kind::Delta(_))
    ));
    let (acks, err) = exchange(&server.url, messages, 2).await;
    assert!(err.is_none(), "{err:?}");
    assert!(acks[0].duplicate);
    assert!(!acks[1].duplicate);
    assert_eq!(sessions_at(&server.url, 1).await, vec![(10, "idle".into())]);
    assert_eq!(
        sessions_at(&server.url, 2).await,
        vec![(10, "active".into())],
        "the row the second stream left out is its own, not the stored one"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_duplicate_that_differs_does_not_pass_for_the_stored_sample() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    // One stream sends sample 1 twice, the second time different (only a
    // confused agent would): the second is a duplicate, not stored, but
    // it is what the stream's next delta refers to.
    let snapshots = [
        snapshot(1, &[(10, "idle", "select 1")]),
        snapshot(1, &[(10, "active", "select 2")]),
        snapshot(2, &[(10, "active", "select 2")]),
    ];
    let messages = stream_of(&snapshots);
    assert!(matches!(
        messages[3].kind,
        Some(pb::agent_message::Kind::Delta(_))
    ));
    let (acks, err) = exchange(&server.url, messages, 3).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        acks.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
        [false, true, false]
    );
    assert_eq!(sessions_at(&server.url, 1).await, vec![(10, "idle".into())]);
    assert_eq!(
        sessions_at(&server.url, 2).await,
        vec![(10, "active".into())]
    );
    server.stop().await;
}

#[tokio::test]
async fn rollups_of_a_delta_stream_are_those_of_its_snapshots_whole() {
    // Sessions change state, come and go; sample 3 comes twice, the second
    // time different (a duplicate, not stored, that the next delta refers
    // to). The sessions a delta moves over are counted without looking
    // at their values again: the counts must be those of the rows.
    let states: [&[(i32, &str, &str)]; 7] = [
        &[(10, "idle", "a"), (11, "active", "b"), (12, "idle", "c")],
        &[(10, "idle", "a"), (11, "idle", "b"), (12, "idle", "c")],
        &[(10, "active", "d"), (11, "idle", "b"), (13, "active", "e")],
        &[(10, "idle", "d"), (11, "active", "f"), (13, "active", "e")],
        &[(10, "idle", "d"), (11, "idle", "f"), (13, "idle", "e")],
        &[(10, "idle", "d"), (11, "idle", "f"), (13, "idle", "e")],
        &[(10, "active", "g"), (11, "idle", "f"), (14, "idle", "h")],
    ];
    let seqs = [1, 2, 3, 3, 4, 5, 6];
    let snapshots: Vec<_> = seqs
        .iter()
        .zip(states)
        .map(|(&seq, s)| snapshot(seq, s))
        .collect();

    let streamed = tempfile::tempdir().unwrap();
    let server = Server::start(streamed.path()).await;
    let (acks, err) = exchange(&server.url, stream_of(&snapshots), snapshots.len()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(acks.iter().filter(|a| a.duplicate).count(), 1);
    server.stop().await;

    let whole = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(common::reopen_store(whole.path()));
    let ingestor = pgtrail_collector::Ingestor::new(store.clone());
    for s in &snapshots {
        ingestor.ingest("db-test", s).await.unwrap();
    }
    ingestor.close().await.unwrap();
    drop(ingestor);

    use pgtrail_collector::store::{Resolution, Store};
    let rollups = |store: &dyn Store| {
        let id = store.instances().unwrap()[0].id;
        let minutes = store
            .rollups(
                id,
                Resolution::Minute,
                T0 - 3_600_000_000,
                T0 + 3_600_000_000,
            )
            .unwrap();
        let hour = store
            .rollups(id, Resolution::Hour, T0 - 3_600_000_000, T0 + 3_600_000_000)
            .unwrap();
        (minutes, hour)
    };
    let want = rollups(store.as_ref());
    drop(store);
    let got = rollups(&common::reopen_store(streamed.path()));
    assert!(!want.0.is_empty() && want.0[0].1.samples == 6, "{want:?}");
    assert_eq!(got, want);
}

#[tokio::test]
async fn history_survives_a_restart_of_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut enc = StreamEncoder::default();
    let msgs = vec![
        hello(),
        wrap(enc.encode(&snapshot(1, &[(10, "idle", "a")]))),
        wrap(enc.encode(&snapshot(2, &[(10, "active", "b"), (11, "idle", "c")]))),
    ];
    exchange(&server.url, msgs, 2).await;
    server.stop().await;

    let server = Server::start(dir.path()).await;
    let mut history = HistoryClient::connect(server.url.clone()).await.unwrap();
    let peaks = history
        .peaks(pb::PeaksRequest {
            scope: None,
            window: Some(pb::Window {
                from_us: T0,
                to_us: T0 + 10_000_000,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .peaks;
    assert_eq!(peaks.len(), 1);
    assert_eq!(peaks[0].total, 2);
    assert_eq!(peaks[0].at_us, T0 + 2_000_000);
    assert_eq!(peaks[0].port, Some(5432));
    assert_eq!(peaks[0].max_connections, Some(100));

    let bad = history
        .peaks(pb::PeaksRequest {
            scope: Some(pb::Scope {
                hosts: vec!["nosuch".into()],
            }),
            window: Some(pb::Window {
                from_us: T0,
                to_us: T0 + 1,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);
    assert!(bad.message().contains("db-test"), "{}", bad.message());
    server.stop().await;
}

#[tokio::test]
async fn the_server_stops_while_an_agent_is_connected() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = IngestClient::connect(server.url.clone()).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let mut enc = StreamEncoder::default();
    tx.send(hello()).await.unwrap();
    tx.send(wrap(enc.encode(&snapshot(1, &[(10, "idle", "a")]))))
        .await
        .unwrap();
    let mut replies = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = replies.message().await.unwrap();
    assert!(first.is_some(), "acknowledged");
    // The agent keeps its stream open; stopping must not wait for it.
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("the server stopped with an agent connected");
    assert!(matches!(replies.message().await, Ok(None) | Err(_)));
    drop(tx);
}
