//! Query latency: `peaks`, `leaks`, `at` and `ps` over 1 day and 7 days of
//! history, for 10 and 100 instances, in-process through
//! `Collector::history()` (the code the gRPC `History` service calls).
//!
//! History is loaded through the real ingest path (`Ingestor::append`,
//! flushed per instance) from simulated instances (`common::sim`, 200
//! client backends each). Sampling a week of 100 instances at 1 s would be
//! 60 million snapshots, so the bulk is sampled coarsely (one snapshot per
//! `--bulk` minutes, default 30) and the places a query's cost depends on
//! are sampled densely: one a minute for the first two hours (the 7-day
//! window's start edge), for two hours around the 1-day window's start and
//! for the last hour, and one a second for the last three minutes. So a
//! window assembles from the pieces ARCHITECTURE.md names: hour rollups
//! for whole hours, minute rollups for the minutes left and raw samples for
//! partial minutes. What the coarse bulk does not reproduce is the number
//! of episodes a week of 1 s sampling produces: the run prints how many
//! episodes the store holds, and the leaks latency per stored episode.
//!
//! Latency is wall time (median over `--runs`), with the process's CPU
//! beside it (every thread: fleet-wide questions spread instances over
//! the cores; sled's own threads are in it too). The 10-instance figures use a host glob over the same
//! store (`db-00*`).
//!
//! Flags: `--quick` (10 instances, 1 day), `--instances 100`, `--days 7`,
//! `--bulk 30`, `--runs 9`, `--sessions 200`, `--keep DIR` (load the
//! history into DIR and keep it; a later run with the same DIR and flags
//! skips the load and measures the queries only), `--all false` (skip
//! the `leaks --limit 0` rows and the count of stored episodes, which
//! take most of a run: for profiling the others).

mod common;

/// The collector's load and questions run in this process: allocate as the
/// `pgtrail-collector` binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use common::sim::{Rng, Sim};
use common::{median, self_cpu_ns, table, Args};
use pgtrail_collector::store::EpisodeKind;
use pgtrail_collector::Collector;
use pgtrail_proto::pb::{self, Dimension};
use pgtrail_proto::time::{Micros, MINUTE, SECOND};

const HOUR: Micros = 60 * MINUTE;
const DAY: Micros = 24 * HOUR;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let instances: usize = args.get("instances", if args.quick { 10 } else { 100 });
    let days: i64 = args.get("days", if args.quick { 1 } else { 7 });
    let bulk: i64 = args.get("bulk", 30);
    let runs: usize = args.get("runs", if args.quick { 3 } else { 9 });
    let sessions: usize = args.get("sessions", 200);
    let keep: String = args.get("keep", String::new());
    let all: bool = args.get("all", true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(instances, days, bulk, runs, sessions, keep, all))
}

/// The moments one instance is sampled at, in order.
fn timeline(end: Micros, days: i64, bulk: i64) -> Vec<Micros> {
    let start = end - days * DAY - HOUR;
    let dense = |t: Micros| {
        t < start + 2 * HOUR || (t >= end - DAY - HOUR && t < end - DAY + HOUR) || t >= end - HOUR
    };
    let mut out = Vec::new();
    let mut t = start;
    while t <= end - 3 * MINUTE {
        out.push(t);
        t += if dense(t) { MINUTE } else { bulk * MINUTE };
    }
    while t <= end {
        out.push(t);
        t += SECOND;
    }
    out
}

async fn run(
    instances: usize,
    days: i64,
    bulk: i64,
    runs: usize,
    sessions: usize,
    keep: String,
    all: bool,
) -> anyhow::Result<()> {
    println!("## Query latency\n");
    println!("machine: {}\n", common::machine());
    let dir = tempfile::tempdir()?;
    let path = if keep.is_empty() {
        dir.path().join("store")
    } else {
        keep.into()
    };
    let collector = Collector::open(&path)?;
    // A kept store loaded by an earlier run with the same flags is reused:
    // its last sample is the end.
    let mut kept_end = None;
    if let Some(first) = collector
        .store()
        .instances()?
        .into_iter()
        .find(|r| r.host == "db-000")
    {
        kept_end = collector.store().sample_bounds(first.id)?.map(|b| b.1);
    }
    // Whole seconds, so the last sample sits on the window's end.
    let end = kept_end.unwrap_or(pgtrail_proto::time::now() / SECOND * SECOND - MINUTE);
    let times = timeline(end, days, bulk);
    let loaders = if kept_end.is_some() { 0 } else { 2 };
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..loaders {
        let ingestor = collector.ingestor();
        let times = times.clone();
        workers.push(tokio::spawn(async move {
            for i in (w..instances).step_by(2) {
                let host = format!("db-{i:03}");
                let mut sim = Sim::new(1000 + i as u64, "main", times[0], sessions);
                let mut last = times[0] - SECOND;
                for &t in &times {
                    let snapshot = sim.step(t - last);
                    last = t;
                    ingestor.append(&host, &snapshot).await?;
                }
                ingestor.flush().await?;
                if i % 10 == 0 {
                    eprintln!("queries bench: {host} loaded");
                }
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let load_s = t0.elapsed().as_secs_f64();
    let store = collector.store();
    let history = collector.history();
    let fleet = pb::Scope::default();
    let ten = pb::Scope {
        hosts: vec!["db-00*".into()],
    };
    let episodes_stored = if !all {
        "not counted (--all false)".to_string()
    } else {
        let episodes = history.episodes(
            &fleet,
            &pb::Window {
                from_us: end - days * DAY - 2 * HOUR,
                to_us: end,
            },
            EpisodeKind::IdleInTransaction,
            0,
            0,
        )?;
        episodes.episodes.len().to_string()
    };
    let loaded = if loaders == 0 {
        "reused from an earlier run's load through Ingestor::append".to_string()
    } else {
        format!("loaded through Ingestor::append in {load_s:.0} s")
    };
    println!(
        "history: {instances} instances × {} samples ({days} d; bulk one per {bulk} min, dense edges), {} session rows, {loaded}; store {:.0} MiB on disk; {episodes_stored} idle-in-transaction episodes stored\n",
        times.len(),
        times.len() * instances * sessions,
        common::mib(store.size_on_disk()?),
    );

    let mut rng = Rng::new(99);
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    let mut windows = vec![1];
    if days >= 7 {
        windows.push(7);
    }
    for (scope, n) in [(&ten, instances.min(10)), (&fleet, instances)] {
        for &d in &windows {
            let window = pb::Window {
                from_us: end - d * DAY + 30 * SECOND,
                to_us: end,
            };
            let (wall, cpu, count) = time_it(runs, || {
                Ok(history
                    .peaks(scope, &window, Dimension::Unspecified, 0)?
                    .len())
            })?;
            rows.push(row("peaks", n, d, wall, cpu, count, 100.0));
            if n == instances && d == 7 {
                summary.push(("peaks 7 d", n, wall, 100.0));
            }
            let leaks = |limit| {
                time_it(runs, || {
                    Ok(history
                        .episodes(
                            scope,
                            &window,
                            EpisodeKind::IdleInTransaction,
                            30 * SECOND,
                            limit,
                        )?
                        .episodes
                        .len())
                })
            };
            let (wall, cpu, count) = leaks(100)?;
            rows.push(row(
                "leaks --min 30s (the 100 longest)",
                n,
                d,
                wall,
                cpu,
                count,
                100.0,
            ));
            if n == instances && d == 7 {
                summary.push(("leaks 7 d, the 100 longest", n, wall, 100.0));
            }
            if !all {
                continue;
            }
            let (wall, cpu, count) = leaks(0)?;
            rows.push(row(
                "leaks --min 30s --limit 0 (all)",
                n,
                d,
                wall,
                cpu,
                count,
                100.0,
            ));
            if n == instances && d == 7 {
                summary.push(("leaks 7 d, all", n, wall, 100.0));
            }
        }
        let span = end - times[0];
        let (wall, cpu, count) = time_it(runs, || {
            let t = times[0] + rng.below(span as u64) as Micros;
            Ok(history
                .at(scope, t)?
                .iter()
                .map(|i| i.sessions.len())
                .sum::<usize>())
        })?;
        rows.push(row("at (sessions)", n, days, wall, cpu, count, 50.0));
        summary.push(("at", n, wall, 50.0));
    }
    let one = pb::Scope {
        hosts: vec!["db-001".into()],
    };
    let span = end - times[0];
    let (wall, cpu, count) = time_it(runs, || {
        let t = times[0] + rng.below(span as u64) as Micros;
        Ok(history
            .at(&one, t)?
            .iter()
            .map(|i| i.processes.len())
            .sum::<usize>())
    })?;
    rows.push(row(
        "ps --host db-001 (processes)",
        1,
        days,
        wall,
        cpu,
        count,
        50.0,
    ));
    summary.push(("ps one host", 1, wall, 50.0));
    table(
        &[
            "query",
            "instances",
            "window / history (d)",
            "median wall",
            "median CPU",
            "rows returned",
            "target",
            "wall / target",
        ],
        &rows,
    );
    for (name, n, wall, target) in summary {
        println!(
            "@@ {name} over {n} instances | {wall:.1} ms | < {target:.0} ms | {:.2}× | median of {runs} runs, wall",
            wall / target
        );
    }
    println!();
    Ok(())
}

fn row(
    name: &str,
    n: usize,
    days: i64,
    wall: f64,
    cpu: f64,
    count: usize,
    target: f64,
) -> Vec<String> {
    vec![
        name.to_string(),
        n.to_string(),
        days.to_string(),
        format!("{wall:.2} ms"),
        format!("{cpu:.2} ms"),
        count.to_string(),
        format!("< {target:.0} ms"),
        format!("{:.3}×", wall / target),
    ]
}

/// Median wall and CPU time (ms) of `runs` calls, after one warm-up, and
/// what the last call returned.
fn time_it(
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<(f64, f64, usize)> {
    let mut count = f()?;
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (t0, c0) = (Instant::now(), self_cpu_ns());
        count = f()?;
        cpu.push((self_cpu_ns() - c0) as f64 / 1e6);
        wall.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(&wall), median(&cpu), count))
}
