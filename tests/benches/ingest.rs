//! Collector ingest: N concurrent agent streams through the real gRPC
//! `Ingest.Stream` path on 127.0.0.1 into the `pgtrail-collector` binary's
//! sled store.
//!
//! Each stream is one agent (its own host name and connection) replaying
//! realistic snapshots of one instance (200 client backends, the mix and
//! churn of `common::sim`, one a second), encoded beforehand as the agent
//! does (`StreamEncoder`: texts travel once per stream; `SentRows`: rows
//! that did not change go as their pids, in a `delta`), with as many
//! snapshots ahead of the acknowledgements as the agent's sender sends by
//! default (its `queue_capacity`, 300).
//! Messages are encoded to bytes before the clock starts and sent as they
//! are, as the agent sends the rows its spool encoded (its `ingest`
//! codec): agents run on their own hosts, and the two cores here go to
//! the collector, less only what sending takes.
//! The run ends when every snapshot is acknowledged (acks come once the
//! sample is durable).
//!
//! Reported per N: snapshots/s and session-rows/s (wall clock: a rate),
//! the collector's CPU per snapshot (user + system of its process), the
//! rows per CPU-second, and its RSS. Baselines in the same run, on the
//! same snapshots: decoding them with prost (the least a receiver does),
//! and writing each one's encoded bytes into a bare sled tree with a flush
//! after each (the least a durable ack costs on this disk).
//!
//! The floor under the collector, in the same run on the same snapshots:
//! a receiver that does what every collector must and nothing else. It is
//! this bench's executable started again (with `PGTRAIL_BENCH_RECEIVER`
//! set to the address to serve), with the collector's allocator: it reads
//! each stream through the same tonic server, turns every message back
//! into a self-contained snapshot (`StreamDecoder`, which validates it
//! and restores the rows a delta left out) and acknowledges it at once,
//! storing nothing. Its CPU per snapshot is the least the gRPC path costs
//! on this machine.
//!
//! Each N runs three times (`--runs`) against each server; the tables show
//! the median run (by rate) and every run's rate.
//!
//! Flags: `--quick`, `--streams 1,4,8,16`, `--snapshots 16000` (in total
//! per N), `--sessions 200`, `--window 300` (snapshots ahead of the acks),
//! `--runs 3`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::sim::Sim;
use common::{median, mib, process_cpu_ns, rss_bytes, self_cpu_ns, table, Args};
use pgtrail_agent::config::DEFAULT_QUEUE_CAPACITY;
use pgtrail_proto::intern::StreamEncoder;
use pgtrail_proto::pb::{self, agent_message::Kind};
use pgtrail_proto::time::SECOND;
use pgtrail_proto::unchanged::SentRows;
use pgtrail_tests::{bin, free_port};
use prost::bytes::Bytes;
use prost::Message;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;

/// As the collector's binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Set to an address, the executable is the receive-only floor serving it.
const RECEIVER: &str = "PGTRAIL_BENCH_RECEIVER";

fn main() -> anyhow::Result<()> {
    if let Ok(addr) = std::env::var(RECEIVER) {
        return receiver::serve(&addr);
    }
    let args = Args::parse();
    let streams: Vec<usize> = if args.quick {
        args.list("streams", &[1, 4])
    } else {
        args.list("streams", &[1, 4, 8, 16])
    };
    let total: usize = args.get("snapshots", if args.quick { 400 } else { 16000 });
    let sessions: usize = args.get("sessions", 200);
    let window: usize = args.get("window", DEFAULT_QUEUE_CAPACITY).max(1);
    let runs: usize = args.get("runs", if args.quick { 1 } else { 3 }).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(streams, total, sessions, window, runs))
}

/// Who receives the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The `pgtrail-collector` binary on a fresh store.
    Collector,
    /// The receive-only floor.
    Receiver,
}

struct Level {
    streams: usize,
    snapshots: usize,
    wall: f64,
    cpu_ns: u64,
    rss: u64,
    hwm: u64,
    /// The session-rows/s of every run it is the median of, lowest first.
    rates: Vec<f64>,
}

impl Level {
    fn snapshots_per_s(&self) -> f64 {
        self.snapshots as f64 / self.wall
    }
}

/// Runs `target` `runs` times on `batches`: the median run by rate, with
/// every run's rate.
async fn median_run(
    batches: &[Vec<pb::AgentMessage>],
    target: Target,
    window: usize,
    runs: usize,
    sessions: usize,
) -> anyhow::Result<Level> {
    let mut all = Vec::new();
    for _ in 0..runs {
        all.push(ingest(batches, target, window).await?);
    }
    all.sort_by(|a, b| a.snapshots_per_s().total_cmp(&b.snapshots_per_s()));
    let rates = all
        .iter()
        .map(|r| r.snapshots_per_s() * sessions as f64)
        .collect();
    let mut median = all.swap_remove(all.len() / 2);
    median.rates = rates;
    Ok(median)
}

async fn run(
    levels: Vec<usize>,
    total: usize,
    sessions: usize,
    window: usize,
    runs: usize,
) -> anyhow::Result<()> {
    println!("## Collector ingest\n");
    println!("machine: {}\n", common::machine());
    println!(
        "each stream sends up to {window} snapshots ahead of its acknowledgements; each figure is {}\n",
        runs_said(runs)
    );
    let start = pgtrail_proto::time::now() - 3600 * SECOND;
    let mut results = Vec::new();
    let mut wire_bytes = Vec::new();
    let mut whole_bytes = Vec::new();
    let mut floors = None;
    for &n in &levels {
        let per_stream = total.div_ceil(n);
        let mut batches = Vec::new();
        for s in 0..n {
            let mut sim = Sim::new(s as u64 + 1, "main", start, sessions);
            let mut encoder = StreamEncoder::default();
            let mut sent_rows = SentRows::default();
            let batch: Vec<pb::AgentMessage> = (0..per_stream)
                .map(|_| {
                    let mut wire = encoder.encode(&sim.step(SECOND));
                    if s == 0 {
                        whole_bytes.push(wire.encoded_len() as f64);
                    }
                    let kind = match sent_rows.strip(&mut wire) {
                        true => Kind::Delta(wire),
                        false => Kind::Snapshot(wire),
                    };
                    pb::AgentMessage { kind: Some(kind) }
                })
                .collect();
            batches.push(batch);
        }
        if floors.is_none() {
            wire_bytes = batches[0].iter().map(|m| m.encoded_len() as f64).collect();
            floors = Some(baselines(&batches[0])?);
        }
        eprintln!("ingest bench: {n} streams × {per_stream} snapshots");
        let floor = median_run(&batches, Target::Receiver, window, runs, sessions).await?;
        let collector = median_run(&batches, Target::Collector, window, runs, sessions).await?;
        results.push((collector, floor));
    }
    let (decode_ns, sled_ns, sled_wall) = floors.unwrap_or_default();
    let rows = |snapshots: usize| (snapshots * sessions) as f64;
    println!(
        "snapshot: {sessions} client backends (+5 auxiliary), {:.1} KiB on the wire (median; texts once per stream, unchanged rows as pids), {:.1} KiB with every row\n",
        median(&wire_bytes) / 1024.0,
        median(&whole_bytes) / 1024.0
    );
    let cpu_per = |r: &Level| r.cpu_ns as f64 / r.snapshots as f64;
    let mut table_rows = Vec::new();
    for (who, r) in results
        .iter()
        .flat_map(|(c, f)| [("collector", c), ("receive only", f)])
    {
        let cpu_s = r.cpu_ns as f64 / 1e9;
        table_rows.push(vec![
            who.to_string(),
            r.streams.to_string(),
            r.snapshots.to_string(),
            format!("{:.0}", r.snapshots as f64 / r.wall),
            format!("{:.0}", rows(r.snapshots) / r.wall),
            format!("{:.2} ms", cpu_per(r) / 1e6),
            format!("{:.0}", rows(r.snapshots) / cpu_s),
            format!("{:.0} MiB ({:.0})", mib(r.rss), mib(r.hwm)),
            format!("{:.3}×", rows(r.snapshots) / r.wall / 1e6),
            r.rates
                .iter()
                .map(|rate| format!("{rate:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    table(
        &[
            "server",
            "streams",
            "snapshots",
            "snapshots/s",
            "session-rows/s",
            "server CPU/snapshot",
            "rows per CPU-second",
            "server RSS (peak)",
            "vs 1,000,000 rows/s",
            "every run's session-rows/s",
        ],
        &table_rows,
    );
    println!("Baselines on the same snapshots (median per snapshot):\n");
    table(
        &["baseline", "CPU/snapshot", "rows/s (wall)"],
        &[
            vec![
                "prost decode of the wire message".into(),
                format!("{:.3} ms", decode_ns / 1e6),
                format!("{:.0}", sessions as f64 * 1e9 / decode_ns),
            ],
            vec![
                "bare sled insert of its bytes + flush".into(),
                format!("{:.3} ms", sled_ns / 1e6),
                format!("{:.0}", sessions as f64 * 1e9 / sled_wall),
            ],
        ],
    );
    if let Some((best, floor)) = results
        .iter()
        .max_by(|(a, _), (b, _)| a.snapshots_per_s().total_cmp(&b.snapshots_per_s()))
    {
        let rate = rows(best.snapshots) / best.wall;
        let floor_rate = rows(floor.snapshots) / floor.wall;
        println!(
            "@@ ingest session-rows/s (best N: {} streams, {}) | {:.0} | ≥ 1,000,000 | {:.3}× | its runs {:.0}–{:.0}; receive-only floor {:.0} rows/s ({:.3}× the target), collector {:.2}× its rate; collector CPU/snapshot {:.2} ms = {:.1}× the floor's {:.2} ms, {:.1}× prost decode, {:.1}× bare sled insert+flush",
            best.streams,
            runs_said(best.rates.len()),
            rate,
            rate / 1e6,
            best.rates.first().copied().unwrap_or(rate),
            best.rates.last().copied().unwrap_or(rate),
            floor_rate,
            floor_rate / 1e6,
            rate / floor_rate,
            cpu_per(best) / 1e6,
            cpu_per(best) / cpu_per(floor),
            cpu_per(floor) / 1e6,
            cpu_per(best) / decode_ns,
            cpu_per(best) / sled_ns,
        );
        println!(
            "@@ collector RSS under ingest (peak, {} streams) | {:.0} MiB | (none) | - | -",
            best.streams,
            mib(best.hwm)
        );
    }
    println!();
    Ok(())
}

/// "one run", or "the median of N runs".
fn runs_said(runs: usize) -> String {
    match runs {
        1 => "one run".into(),
        n => format!("the median of {n} runs"),
    }
}

/// (prost decode CPU, bare sled insert+flush CPU, its wall time), ns per
/// snapshot, medians.
fn baselines(batch: &[pb::AgentMessage]) -> anyhow::Result<(f64, f64, f64)> {
    let encoded: Vec<Vec<u8>> = batch.iter().map(|m| m.encode_to_vec()).collect();
    let mut decode = Vec::new();
    for bytes in &encoded {
        let c0 = common::thread_cpu_ns();
        let m = pb::AgentMessage::decode(bytes.as_slice())?;
        drop(m);
        decode.push((common::thread_cpu_ns() - c0) as f64);
    }
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    let tree = db.open_tree("samples")?;
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    for (i, bytes) in encoded.iter().enumerate() {
        let (c0, t0) = (self_cpu_ns(), Instant::now());
        tree.insert((i as u64).to_be_bytes(), bytes.as_slice())?;
        db.flush()?;
        cpu.push((self_cpu_ns() - c0) as f64);
        wall.push(t0.elapsed().as_nanos() as f64);
    }
    Ok((median(&decode), median(&cpu), median(&wall)))
}

/// A server process: a `pgtrail-collector` on a fresh store, or the
/// receive-only floor.
struct ServerProcess {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    async fn start(target: Target) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = format!("127.0.0.1:{}", free_port());
        let mut command = match target {
            Target::Collector => {
                let mut c = Command::new(bin("pgtrail-collector"));
                c.arg("--listen")
                    .arg(&addr)
                    .arg("--data")
                    .arg(dir.path().join("store"));
                c
            }
            Target::Receiver => {
                let mut c = Command::new(std::env::current_exe()?);
                c.env(RECEIVER, &addr);
                c
            }
        };
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {target:?} server"))?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(Self {
                    child,
                    addr,
                    _dir: dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the {target:?} server does not listen on {addr}")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ingest(
    batches: &[Vec<pb::AgentMessage>],
    target: Target,
    window: usize,
) -> anyhow::Result<Level> {
    let collector = ServerProcess::start(target).await?;
    let pid = collector.child.id() as i32;
    let streams = batches.len();
    let snapshots: usize = batches.iter().map(Vec::len).sum();
    // Encoded before the clock starts: the agents' work is theirs (the
    // agent bench measures it), and this machine's two cores are the
    // collector's to use, less only what sending takes.
    let batches: Vec<Vec<Bytes>> = batches
        .iter()
        .map(|b| b.iter().map(|m| Bytes::from(m.encode_to_vec())).collect())
        .collect();
    let mut clients = Vec::new();
    for _ in 0..streams {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", collector.addr))?
                .connect()
                .await?;
        clients.push(tonic::client::Grpc::new(channel));
    }
    let c0 = process_cpu_ns(pid).unwrap_or(0);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (s, (mut client, batch)) in clients.into_iter().zip(batches).enumerate() {
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(window + 1);
            let count = batch.len();
            let hello = pb::AgentMessage {
                kind: Some(Kind::Hello(pb::Hello {
                    agent_id: format!("bench-{s}"),
                    host: format!("bench-{s}"),
                    agent_version: "bench".into(),
                })),
            };
            tx.send(Bytes::from(hello.encode_to_vec())).await?;
            let permits = Arc::new(Semaphore::new(window));
            let feeder = {
                let permits = permits.clone();
                tokio::spawn(async move {
                    for m in batch {
                        permits.acquire().await.expect("open").forget();
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    }
                    // Keep the stream open until the acks are in.
                    tx
                })
            };
            client.ready().await?;
            let mut acks = client
                .streaming(
                    tonic::Request::new(ReceiverStream::new(rx)),
                    PathAndQuery::from_static("/pgtrail.v1.Ingest/Stream"),
                    raw::Encoded,
                )
                .await?
                .into_inner();
            let mut acked = 0;
            while acked < count {
                match acks.message().await? {
                    Some(_) => {
                        acked += 1;
                        permits.add_permits(1);
                    }
                    None => bail!("the server ended stream {s} after {acked} acks"),
                }
            }
            drop(feeder.await?);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu_ns = process_cpu_ns(pid).unwrap_or(0) - c0;
    let (rss, hwm) = rss_bytes(pid);
    Ok(Level {
        streams,
        snapshots,
        wall,
        cpu_ns,
        rss,
        hwm,
        rates: Vec::new(),
    })
}

/// A codec that sends messages encoded beforehand, as they are, and reads
/// the collector's replies.
mod raw {
    use pgtrail_proto::pb;
    use prost::bytes::{BufMut, Bytes};
    use prost::Message;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    /// Sends `Bytes` holding encoded `AgentMessage`s.
    #[derive(Debug, Clone, Copy)]
    pub struct Encoded;

    impl Codec for Encoded {
        type Encode = Bytes;
        type Decode = pb::CollectorMessage;
        type Encoder = Encoded;
        type Decoder = Encoded;

        fn encoder(&mut self) -> Self::Encoder {
            Encoded
        }

        fn decoder(&mut self) -> Self::Decoder {
            Encoded
        }
    }

    impl Encoder for Encoded {
        type Item = Bytes;
        type Error = Status;

        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Encoded {
        type Item = pb::CollectorMessage;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
            pb::CollectorMessage::decode(src)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()))
        }
    }
}

/// The receive-only floor: the collector's gRPC path without a store
/// (each message taken as its bytes, decoded, its rows found in them).
mod receiver {
    use pgtrail_proto::intern::StreamDecoder;
    use pgtrail_proto::pb;
    use pgtrail_proto::receive::ingest_server;
    use pgtrail_proto::received::Received;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};

    /// Serves `addr` until killed.
    pub fn serve(addr: &str) -> anyhow::Result<()> {
        let addr = addr.parse()?;
        tokio::runtime::Runtime::new()?.block_on(async move {
            tonic::transport::Server::builder()
                .add_service(
                    ingest_server::IngestServer::new(Receiver).max_decoding_message_size(64 << 20),
                )
                .serve(addr)
                .await
        })?;
        Ok(())
    }

    struct Receiver;

    #[tonic::async_trait]
    impl ingest_server::Ingest for Receiver {
        type StreamStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

        async fn stream(
            &self,
            request: Request<Streaming<Received>>,
        ) -> Result<Response<Self::StreamStream>, Status> {
            let mut inbound = request.into_inner();
            let (acks, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                let mut decoder = StreamDecoder::default();
                while let Ok(Some(received)) = inbound.message().await {
                    let Ok(message) = received.decode() else {
                        break;
                    };
                    let decoded = match message.kind {
                        Some(pb::agent_message::Kind::Snapshot(wire)) => {
                            std::hint::black_box(received.rows(&wire));
                            decoder.decode(wire)
                        }
                        Some(pb::agent_message::Kind::Delta(wire)) => {
                            std::hint::black_box(received.rows(&wire));
                            decoder.decode_delta(wire)
                        }
                        _ => continue,
                    };
                    let ack = match decoded {
                        Ok(snapshot) => Ok(pb::CollectorMessage {
                            kind: Some(pb::collector_message::Kind::Ack(pb::Ack {
                                instance: snapshot.snapshot.instance.clone(),
                                seq: snapshot.snapshot.seq,
                                duplicate: false,
                            })),
                        }),
                        Err(e) => Err(Status::invalid_argument(e.to_string())),
                    };
                    if acks.send(ack).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }
}
