//! Storage: bytes on disk per session-sample after a simulated stretch of
//! 1 s sampling of one instance with 200 client backends (the mix and
//! churn of `common::sim`), stored through the collector's own path:
//! `Ingestor::ingest` (append, then flush before the ack), one snapshot a
//! simulated second, into a sled store in a temp directory.
//!
//! A session-sample is one client backend in one sample (the 5 auxiliary
//! processes ride along uncounted, so the figure errs high). Reported: the
//! store's size on disk (`size_on_disk`, and the files' allocated blocks)
//! per session-sample, and, from reopening the store read-only, the
//! logical bytes (keys + values) per tree, which say where the bytes go.
//! Baselines in the same run, on the same snapshots: the bytes the agent
//! sends (prost, texts once per stream), and the bytes of only the rows
//! that changed since the previous sample (a row-level delta, full rows).
//! The store is sled plus files of its own: sealed samples (a minute per
//! zstd frame), sealed closed episodes (a kind and minute per frame) and
//! each instance's tail log; each is reported. Floors, from the stored
//! records themselves: the sealed samples recompressed ten minutes at a
//! time (zstd 19) instead of a minute, the sealed episodes a mebibyte at a
//! time (zstd 19); the same sled records written again into a fresh sled
//! store; and the sum of the smallest of those sizes with sled's part at
//! this run's amplification, and without it.
//!
//! A full day is 86,400 samples; `--hours` simulates a shorter stretch
//! (default 24; `--quick` 0.25) and the report extrapolates linearly to a
//! day when it is shorter, saying so.
//!
//! Flags: `--quick`, `--hours 24`, `--sessions 200`, `--flush-every 1`,
//! `--keep DIR` (write the store into DIR, which must not exist, and leave
//! it there to be looked at).

mod common;

/// The collector's load and questions run in this process: allocate as the
/// `pgtrail-collector` binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use common::sim::Sim;
use common::{median, table, Args};
use pgtrail_collector::Collector;
use pgtrail_proto::intern::StreamEncoder;
use pgtrail_proto::pb;
use pgtrail_proto::time::SECOND;
use prost::Message;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hours: f64 = args.get("hours", if args.quick { 0.25 } else { 24.0 });
    let sessions: usize = args.get("sessions", 200);
    let flush_every: u64 = args.get("flush-every", 1).max(1);
    let keep: String = args.get("keep", String::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(hours, sessions, flush_every, keep))
}

async fn run(hours: f64, sessions: usize, flush_every: u64, keep: String) -> anyhow::Result<()> {
    println!("## Storage\n");
    println!("machine: {}\n", common::machine());
    let samples = (hours * 3600.0).round() as u64;
    let dir = tempfile::tempdir()?;
    let store_dir = if keep.is_empty() {
        dir.path().join("store")
    } else {
        anyhow::ensure!(!Path::new(&keep).exists(), "--keep {keep}: already exists");
        keep.into()
    };
    let collector = Collector::open(&store_dir)?;
    let ingestor = collector.ingestor();
    let start = pgtrail_proto::time::now() - samples as i64 * SECOND;
    let mut sim = Sim::new(7, "main", start, sessions);
    let mut encoder = StreamEncoder::default();
    let (mut wire, mut delta) = (0u64, 0u64);
    let mut previous: HashMap<i32, (pb::Session, pb::Process)> = HashMap::new();
    let mut append_ns = Vec::new();
    let t0 = Instant::now();
    let c0 = common::self_cpu_ns();
    for i in 0..samples {
        let snapshot = sim.step(SECOND);
        wire += encoder.encode(&snapshot).encoded_len() as u64;
        delta += changed_bytes(&snapshot, &mut previous);
        let a0 = Instant::now();
        if (i + 1) % flush_every == 0 {
            ingestor.ingest("bench", &snapshot).await?;
        } else {
            ingestor.append("bench", &snapshot).await?;
        }
        append_ns.push(a0.elapsed().as_nanos() as f64);
        if i % 3600 == 3599 {
            eprintln!(
                "storage bench: {} h simulated, {:.0} s",
                (i + 1) / 3600,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    ingestor.flush().await?;
    let cpu_s = (common::self_cpu_ns() - c0) as f64 / 1e9;
    let wall = t0.elapsed().as_secs_f64();
    let size_on_disk = collector.store().size_on_disk()?;
    drop(ingestor);
    drop(collector);
    let allocated = allocated_bytes(&store_dir);
    let trees = tree_bytes(&store_dir)?;
    let rewritten = rewritten_bytes(&store_dir, &dir.path().join("rewritten"))?;
    let blocks = Blocks::of(&store_dir)?;

    let session_samples = (samples * sessions as u64) as f64;
    let per = |bytes: u64| bytes as f64 / session_samples;
    println!(
        "{samples} samples ({hours} h at 1 s) of {sessions} client backends = {session_samples:.0} session-samples; ingest took {wall:.0} s wall, {cpu_s:.0} s CPU (simulation included), median {:.2} ms per ingest\n",
        median(&append_ns) / 1e6
    );
    let segments = blocks.samples + blocks.episodes + blocks.tails;
    let sled_bytes = size_on_disk - segments;
    let mut rows = vec![
        vec![
            "store size_on_disk (sled and segment files)".into(),
            format!("{:.1} MiB", common::mib(size_on_disk)),
            format!("{:.1}", per(size_on_disk)),
        ],
        vec![
            "files' allocated blocks".into(),
            format!("{:.1} MiB", common::mib(allocated)),
            format!("{:.1}", per(allocated)),
        ],
        vec![
            "files: sealed samples, a minute per zstd frame".into(),
            format!("{:.1} MiB", common::mib(blocks.samples)),
            format!("{:.2}", per(blocks.samples)),
        ],
        vec![
            "files: sealed closed episodes, a kind and minute per zstd frame".into(),
            format!("{:.1} MiB", common::mib(blocks.episodes)),
            format!("{:.2}", per(blocks.episodes)),
        ],
        vec![
            "files: tail logs (the open minute, the open episodes)".into(),
            format!("{:.1} MiB", common::mib(blocks.tails)),
            format!("{:.2}", per(blocks.tails)),
        ],
        vec![
            "sled".into(),
            format!("{:.1} MiB", common::mib(sled_bytes)),
            format!("{:.1}", per(sled_bytes)),
        ],
    ];
    let logical: u64 = trees.iter().map(|t| t.1).sum();
    for (name, bytes, count) in &trees {
        rows.push(vec![
            format!("logical: tree `{name}` ({count} records)"),
            format!("{:.1} MiB", common::mib(*bytes)),
            format!("{:.2}", per(*bytes)),
        ]);
    }
    rows.push(vec![
        "logical: all trees".into(),
        format!("{:.1} MiB", common::mib(logical)),
        format!("{:.1}", per(logical)),
    ]);
    rows.push(vec![
        "baseline: the same records rewritten into a fresh sled store".into(),
        format!("{:.1} MiB", common::mib(rewritten)),
        format!("{:.1}", per(rewritten)),
    ]);
    for (what, bytes) in [
        (
            "sealed samples ten minutes at a time, zstd 19",
            blocks.ten_minutes,
        ),
        (
            "sealed episodes a mebibyte at a time, zstd 19",
            blocks.episodes_floor,
        ),
    ] {
        rows.push(vec![
            format!("floor: {what}"),
            format!("{:.1} MiB", common::mib(bytes)),
            format!("{:.2}", per(bytes)),
        ]);
    }
    // Samples and episodes at their smallest, the rest as stored, once in
    // sled at this run's amplification and once without it.
    let amplification = sled_bytes as f64 / logical as f64;
    let files = (blocks.ten_minutes + blocks.episodes_floor + blocks.tails) as f64;
    let floor = files + logical as f64 * amplification;
    let bare = files + logical as f64;
    rows.push(vec![
        format!("floor: those, sled's part at this run's amplification ({amplification:.2}×)"),
        format!("{:.1} MiB", floor / (1u64 << 20) as f64),
        format!("{:.1}", floor / session_samples),
    ]);
    rows.push(vec![
        "floor: those without sled's amplification".into(),
        format!("{:.1} MiB", bare / (1u64 << 20) as f64),
        format!("{:.1}", bare / session_samples),
    ]);
    rows.push(vec![
        "baseline: agent's wire bytes".into(),
        format!("{:.1} MiB", common::mib(wire)),
        format!("{:.1}", per(wire)),
    ]);
    rows.push(vec![
        "baseline: changed rows only".into(),
        format!("{:.1} MiB", common::mib(delta)),
        format!("{:.1}", per(delta)),
    ]);
    table(&["what", "bytes", "bytes per session-sample"], &rows);
    let day = if hours < 24.0 {
        format!(
            " (a {hours} h stretch; a day extrapolates linearly to {:.1} GiB)",
            size_on_disk as f64 * 24.0 / hours / (1u64 << 30) as f64
        )
    } else {
        String::new()
    };
    println!(
        "@@ bytes on disk per session-sample{day} | {:.1} | ≤ 10 | {:.1}× | wire {:.1} B, changed rows only {:.1} B; samples {:.1} B, episodes {:.1} B, tails {:.1} B, sled {:.1} B ({:.1} B logical); floor {:.1} B with sled, {:.1} B without",
        per(size_on_disk),
        per(size_on_disk) / 10.0,
        per(wire),
        per(delta),
        per(blocks.samples),
        per(blocks.episodes),
        per(blocks.tails),
        per(sled_bytes),
        per(logical),
        floor / session_samples,
        bare / session_samples,
    );
    println!();
    Ok(())
}

/// The encoded bytes of the sessions and processes that differ from the
/// previous sample's row of the same pid (new ones included).
fn changed_bytes(
    snapshot: &pgtrail_proto::model::Snapshot,
    previous: &mut HashMap<i32, (pb::Session, pb::Process)>,
) -> u64 {
    let processes: HashMap<i32, &pb::Process> =
        snapshot.processes.iter().map(|p| (p.pid, p)).collect();
    let mut bytes = 0u64;
    let mut next = HashMap::with_capacity(previous.len());
    for s in &snapshot.sessions {
        let p = processes
            .get(&s.pid)
            .map(|p| (*p).clone())
            .unwrap_or_default();
        match previous.get(&s.pid) {
            Some((ps, pp)) if ps == s && *pp == p => {}
            Some((ps, pp)) => {
                if ps != s {
                    bytes += s.encoded_len() as u64;
                }
                if *pp != p {
                    bytes += p.encoded_len() as u64;
                }
            }
            None => bytes += (s.encoded_len() + p.encoded_len()) as u64,
        }
        next.insert(s.pid, (s.clone(), p));
    }
    *previous = next;
    bytes
}

/// The blocks allocated to the files under `dir`, in bytes.
fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                total += allocated_bytes(&e.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// The store's own files, and their contents compressed in larger blocks.
struct Blocks {
    samples: u64,
    episodes: u64,
    tails: u64,
    ten_minutes: u64,
    episodes_floor: u64,
}

impl Blocks {
    fn of(dir: &Path) -> anyhow::Result<Blocks> {
        // One instance: its day files hold its minutes in time order, one
        // zstd frame each, which decode as one stream.
        let (mut samples, mut episodes, mut tails) = (0u64, 0u64, 0u64);
        let (mut frames, mut minutes, mut episode_bytes) = (Vec::new(), 0u64, Vec::new());
        for instance in std::fs::read_dir(dir.join("segments"))? {
            let mut files: Vec<_> = std::fs::read_dir(instance?.path())?
                .map(|f| f.map(|f| f.path()))
                .collect::<Result<_, _>>()?;
            files.sort();
            for file in files {
                let bytes = std::fs::read(&file)?;
                let len = bytes.len() as u64;
                match file.extension().and_then(|e| e.to_str()) {
                    Some("seg") => {
                        samples += len;
                        frames.extend(zstd::stream::decode_all(&bytes[..])?);
                        minutes += count_frames(&bytes)?;
                    }
                    Some("eps") => {
                        episodes += len;
                        episode_bytes.extend(zstd::stream::decode_all(&bytes[..])?);
                    }
                    _ => tails += len,
                }
            }
        }
        let per_ten = (frames.len() as u64 * 10 / minutes.max(1)).max(1) as usize;
        let ten: Vec<Vec<u8>> = frames.chunks(per_ten).map(<[u8]>::to_vec).collect();
        let mib: Vec<Vec<u8>> = episode_bytes.chunks(1 << 20).map(<[u8]>::to_vec).collect();
        Ok(Blocks {
            samples,
            episodes,
            tails,
            ten_minutes: compressed_in_blocks(&ten, 1, 19)?,
            episodes_floor: compressed_in_blocks(&mib, 1, 19)?,
        })
    }
}

/// How many zstd frames `bytes` holds, one after the other.
fn count_frames(mut bytes: &[u8]) -> anyhow::Result<u64> {
    let mut n = 0;
    while !bytes.is_empty() {
        let len = zstd::zstd_safe::find_frame_compressed_size(bytes)
            .map_err(|code| anyhow::anyhow!("not a zstd frame ({code})"))?;
        bytes = &bytes[len..];
        n += 1;
    }
    Ok(n)
}

/// The bytes of `values` compressed `per_block` at a time at `level`.
fn compressed_in_blocks(values: &[Vec<u8>], per_block: usize, level: i32) -> anyhow::Result<u64> {
    let mut total = 0;
    for block in values.chunks(per_block) {
        total += zstd::bulk::compress(&block.concat(), level)?.len() as u64;
    }
    Ok(total)
}

/// The size on disk of a fresh sled store at `to` holding every record of
/// the one at `from`, written record by record in key order and flushed
/// once: what sled itself adds to these records.
fn rewritten_bytes(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let source = sled::open(from)?;
    let target = sled::open(to)?;
    for name in source.tree_names() {
        let (from, to) = (source.open_tree(&name)?, target.open_tree(&name)?);
        for kv in from.iter() {
            let (k, v) = kv?;
            to.insert(k, v)?;
        }
    }
    target.flush()?;
    Ok(target.size_on_disk()?)
}

/// (tree, key + value bytes, records) for every tree of the sled store.
fn tree_bytes(dir: &Path) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let db = sled::open(dir)?;
    let mut out = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name)?;
        let (mut bytes, mut count) = (0u64, 0u64);
        for kv in tree.iter() {
            let (k, v) = kv?;
            bytes += (k.len() + v.len()) as u64;
            count += 1;
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        if count > 0 {
            out.push((name, bytes, count));
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.1));
    Ok(out)
}
