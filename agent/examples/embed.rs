//! Embedding the pgtrail agent: sample a PostgreSQL server in-process and
//! receive each snapshot as it is taken, with no collector.
//!
//! ```sh
//! cargo run -p pgtrail-agent --example embed -- postgresql://postgres@127.0.0.1:5432/postgres 3 1s
//! ```
//!
//! Arguments: a connection URL, how many snapshots to print (default 3) and
//! the interval (default 1s). Each snapshot prints one summary line, one
//! line per process (a small `ps` with what strace would tell: wchan and
//! the current system call), and its blind spots, which say what the agent
//! could not see and what would let it.
//!
//! The pattern: build an [`AgentBuilder`], `spawn()` it on a tokio runtime,
//! read the bounded channel, and `shutdown()`. A slow reader never blocks the
//! sampling: snapshots it does not take in time are dropped and counted
//! (`dropped_before`).

use std::time::Duration;

use pgtrail_agent::os::syscall_name;
use pgtrail_agent::{AgentBuilder, InstanceConfig};
use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The agent logs what it cannot see, once, through `tracing`.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: embed URL [COUNT] [INTERVAL]"))?;
    let count: usize = args.next().map_or(Ok(3), |n| n.parse())?;
    let interval = args.next().map_or(Ok(Duration::from_secs(1)), |i| {
        humantime::parse_duration(&i)
    })?;

    let (agent, mut snapshots) = AgentBuilder::new()
        .instance(InstanceConfig::parse(Some("embedded"), &url)?)
        .interval(interval)
        // Every sample reads PSS/USS too: fine for a handful of processes.
        .pss_interval(interval)
        .normalize_queries(true)
        .spawn()?;
    for _ in 0..count {
        let Some(snapshot) = snapshots.recv().await else {
            break;
        };
        print_snapshot(&snapshot);
    }
    let stats = agent.stats();
    agent.shutdown().await;
    println!(
        "stopped after {} samples ({} failed, {} dropped)",
        stats.samples, stats.failures, stats.dropped
    );
    Ok(())
}

fn print_snapshot(s: &Snapshot) {
    let memory = s.memory.unwrap_or_default();
    println!(
        "instance {} seq {}: {} sessions, {} processes, dropped_before {}, host available {}, cgroup usage {}",
        s.instance,
        s.seq,
        s.sessions.len(),
        s.processes.len(),
        s.dropped_before,
        mib(memory.host_available_bytes),
        mib(memory.cgroup_usage_bytes),
    );
    for p in &s.processes {
        println!("  {}", process_line(p));
    }
    for session in &s.sessions {
        if let Some(text) = s.query_of(session) {
            println!("  query pid={} {}", session.pid, text.replace('\n', " "));
        }
    }
    for spot in &s.blind_spots {
        println!("  blind spot: {spot}");
    }
}

/// `pid=.. kind=.. state=.. wchan=.. syscall=name(nr) ...`; `?` marks a
/// field the agent could not read.
fn process_line(p: &pb::Process) -> String {
    let kind = pb::ProcessKind::try_from(p.kind).unwrap_or_default();
    let syscall = p.syscall.map_or("?".to_string(), |nr| {
        format!("{}({nr})", syscall_name(nr).unwrap_or("unknown"))
    });
    let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    format!(
        "pid={} kind={} state={} wchan={} syscall={} threads={} oom_score={} ctxt={}/{} rss={} pss={} uss={} read={} blkio_delay_us={} title={:?}",
        p.pid,
        kind.label(),
        p.state,
        p.wchan.as_deref().unwrap_or("?"),
        syscall,
        p.threads.map_or("?".to_string(), |t| t.to_string()),
        p.oom_score.map_or("?".to_string(), |t| t.to_string()),
        opt(p.voluntary_ctxt_switches),
        opt(p.nonvoluntary_ctxt_switches),
        opt(p.rss_bytes),
        opt(p.pss_bytes),
        opt(p.uss_bytes),
        opt(p.read_bytes),
        opt(p.blkio_delay_us),
        p.title,
    )
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".to_string(), |b| format!("{} MiB", b >> 20))
}
