//! Agent cost per sample, against the floor and against pg_activity, on a
//! real PostgreSQL with 100, 500 and 1000 client backends.
//!
//! The bench opens the backends itself: 70 % idle, 10 % idle in
//! transaction (one of them holding a row lock), 20 % active (`SELECT
//! pg_sleep(3600)`), of which one in 200 waits on the row lock. At each
//! level it measures, in CPU time (user + system):
//!
//! - the agent library: `Sampler::sample()` on a thread of its own with a
//!   current-thread runtime (the thread's CPU, which includes the
//!   connection task), plus the CPU of the sampler's backend; once a
//!   second, median over `--samples`;
//! - the agent binary: `pgtrail-agent` streaming to an in-process
//!   collector, its process CPU per acknowledged sample (with encoding and
//!   gRPC) plus its backend's, median over windows, and its RSS;
//! - floor (a): a minimal tokio-postgres client running the agent's
//!   `pg_stat_activity` query, client CPU plus its backend's;
//! - floor (b): one pass reading `/proc/PID/stat` of every process of the
//!   instance (open, read, close), and (b') the same with kept-open files
//!   and `pread`;
//! - peer: `pg_activity --refresh 1` under tmux on the same server, its
//!   CPU (process tree) per refresh plus its backends', and its RSS.
//!
//! Flags: `--quick`, `--backends 100,500,1000`, `--samples 20`,
//! `--window 3` (seconds per window for the binaries), `--windows 7`,
//! `--warmup 0` (seconds the library and the binary each run before they
//! are measured).
//!
//! Without a warm-up the library and the binary are measured in their
//! first seconds, while the agent is still reading every process's
//! `smaps_rollup` a first time (up to its budget of about 2 ms a sample; at
//! 1000 backends that lasts about two and a half minutes). After it, only
//! the processes that ran or whose PSS is ten cadences old are read again
//! (about 1 ms a sample at 1000 idle backends): `--warmup 180` measures that
//! steady state.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use common::{median, ms, process_cpu_ns, rss_bytes, table, thread_cpu_ns, tree_cpu_ns, Args};
use pgtrail_agent::{InstanceConfig, Sampler};
use pgtrail_collector::Collector;
use pgtrail_tests::{bin, PgServer};
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};

/// What one level's measurements give, by label, in order.
type Figures = Vec<(&'static str, String)>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let levels: Vec<usize> = if args.quick {
        args.list("backends", &[100])
    } else {
        args.list("backends", &[100, 500, 1000])
    };
    let samples: usize = args.get("samples", if args.quick { 5 } else { 20 });
    let window: u64 = args.get("window", 3);
    let windows: usize = args.get("windows", if args.quick { 2 } else { 7 });
    let warmup: u64 = args.get("warmup", 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(
        levels,
        Plan {
            samples,
            window,
            windows,
            warmup,
        },
    ))
}

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Samples per figure (library, floors).
    samples: usize,
    /// Seconds per window, and windows (binaries).
    window: u64,
    windows: usize,
    /// Seconds the library and the binary run before they are measured.
    warmup: u64,
}

async fn run(levels: Vec<usize>, plan: Plan) -> anyhow::Result<()> {
    let Plan {
        samples,
        window,
        windows,
        warmup,
    } = plan;
    println!("## Agent cost per sample\n");
    println!("machine: {}\n", common::machine());
    let max = levels.iter().copied().max().unwrap_or(100);
    let pg = PgServer::start_with(&[
        ("max_connections", &(max + 100).max(1100).to_string()),
        ("shared_buffers", "128MB"),
    ])?;
    let version: String = {
        let c = pg.connect("bench-control").await?;
        c.query_one("SELECT version()", &[]).await?.get(0)
    };
    println!("server: {version}");
    println!(
        "samples per figure: {samples} (library, floors); binaries: {windows} windows of {window} s"
    );
    if warmup == 0 {
        println!(
            "warm-up: none (the agent's first seconds, while smaps_rollup is read a first time)\n"
        );
    } else {
        println!(
            "warm-up: {warmup} s of sampling before the library and the binary are measured\n"
        );
    }
    pg.execute("CREATE TABLE bench_lock (id int PRIMARY KEY); INSERT INTO bench_lock VALUES (1)")
        .await?;
    let control = pg.connect("bench-control").await?;
    let mut load = Load::default();
    let mut results: Vec<(usize, Figures)> = Vec::new();
    for &n in &levels {
        load.grow(&pg, n).await?;
        load.settle(&control, n).await?;
        eprintln!("agent bench: {n} client backends open");
        let figures = measure_level(&pg, &control, plan).await?;
        results.push((n, figures));
    }
    print_results(&results);
    load.stop();
    Ok(())
}

/// The client backends the bench holds open.
#[derive(Default)]
struct Load {
    clients: Vec<Arc<Client>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the i-th backend does: 7 in 10 idle, 1 idle in transaction, 2
/// active; the first idle-in-transaction one holds the row lock and one in
/// 200 active ones waits on it.
fn role(i: usize) -> &'static str {
    match i % 10 {
        7 => "bench-idle-tx",
        8 | 9 if i % 200 == 9 => "bench-lock-wait",
        8 | 9 => "bench-active",
        _ => "bench-idle",
    }
}

impl Load {
    async fn grow(&mut self, pg: &PgServer, to: usize) -> anyhow::Result<()> {
        let from = self.clients.len();
        let mut set = JoinSet::new();
        let mut opened: BTreeMap<usize, Client> = BTreeMap::new();
        for i in from..to {
            let url = pg.url();
            set.spawn(async move {
                let mut config: tokio_postgres::Config = url.parse()?;
                config.application_name(role(i));
                let (client, conn) = config.connect(NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                anyhow::Ok((i, client))
            });
            if set.len() >= 16 {
                let (i, c) = set.join_next().await.expect("a task")??;
                opened.insert(i, c);
            }
        }
        while let Some(r) = set.join_next().await {
            let (i, c) = r??;
            opened.insert(i, c);
        }
        for (i, client) in opened {
            let client = Arc::new(client);
            match role(i) {
                "bench-idle-tx" => {
                    client.batch_execute("BEGIN").await?;
                    if i == 7 {
                        client
                            .batch_execute("SELECT * FROM bench_lock WHERE id = 1 FOR UPDATE")
                            .await?;
                    } else {
                        client.batch_execute("SELECT 1").await?;
                    }
                }
                "bench-active" => {
                    let c = client.clone();
                    self.tasks.push(tokio::spawn(async move {
                        let _ = c.batch_execute("SELECT pg_sleep(3600)").await;
                    }));
                }
                "bench-lock-wait" => {
                    let c = client.clone();
                    self.tasks.push(tokio::spawn(async move {
                        let _ = c
                            .batch_execute("UPDATE bench_lock SET id = id WHERE id = 1")
                            .await;
                    }));
                }
                _ => {}
            }
            self.clients.push(client);
        }
        Ok(())
    }

    /// Waits until the server shows every backend in its state.
    async fn settle(&self, control: &Client, n: usize) -> anyhow::Result<()> {
        let want_active = (0..n)
            .filter(|&i| matches!(role(i), "bench-active" | "bench-lock-wait"))
            .count() as i64;
        for _ in 0..300 {
            let row = control
                .query_one(
                    "SELECT count(*) FILTER (WHERE application_name LIKE 'bench-%' AND application_name <> 'bench-control'),
                            count(*) FILTER (WHERE application_name IN ('bench-active', 'bench-lock-wait') AND state = 'active'),
                            count(*) FILTER (WHERE wait_event_type = 'Lock'),
                            count(*) FILTER (WHERE state = 'idle in transaction')
                     FROM pg_stat_activity",
                    &[],
                )
                .await?;
            let (total, active, waiting, idle_tx): (i64, i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if total >= n as i64 && active >= want_active {
                eprintln!(
                    "agent bench: {total} backends, {active} active ({waiting} waiting on a lock), {idle_tx} idle in transaction"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("the {n} client backends did not settle within 60 s")
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn backend_of(control: &Client, application_name: &str) -> anyhow::Result<Vec<i32>> {
    let rows = control
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn cpu_of(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|&p| process_cpu_ns(p)).sum()
}

async fn measure_level(pg: &PgServer, control: &Client, plan: Plan) -> anyhow::Result<Figures> {
    let Plan {
        samples,
        window,
        windows,
        warmup,
    } = plan;
    let mut f: Figures = Vec::new();
    let url = pg.url();

    // The agent library, sample by sample.
    let lib = {
        let url = format!("{url}?application_name=bench-sampler");
        std::thread::spawn(move || sampler_costs(&url, samples, warmup))
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler thread panicked"))??
    };

    // Floor (a): the same query from a minimal client.
    let floor_a = {
        let url = url.clone();
        std::thread::spawn(move || query_floor(&url, samples))
            .join()
            .map_err(|_| anyhow::anyhow!("the floor thread panicked"))??
    };

    // Floor (b): /proc/PID/stat of every process of the instance.
    let postmaster = pg.postmaster_pid()?;
    let (floor_b, floor_b_pread, processes) = proc_floor(postmaster, samples);

    // The agent binary and pg_activity, over time windows.
    let binary = agent_binary(&url, control, window, windows, warmup).await?;
    let peer = pg_activity(pg, control, window, windows).await?;

    let agent_total = lib.client + lib.backend;
    let bin_total = binary.cpu + binary.backend;
    let floor = floor_a.0 + floor_a.1 + floor_b;
    let peer_total = peer.cpu + peer.backend;
    f.push((
        "sessions / processes in a snapshot",
        format!("{} / {}", lib.sessions, lib.processes),
    ));
    f.push(("instance processes in /proc", processes.to_string()));
    f.push(("agent lib: Sampler::sample() CPU", fmt_ms(lib.client)));
    f.push(("agent lib: its backend CPU", fmt_ms(lib.backend)));
    f.push((
        "**agent lib + backend**",
        format!("**{}**", fmt_ms(agent_total)),
    ));
    f.push(("agent binary: CPU per sample", fmt_ms(binary.cpu)));
    f.push(("agent binary: its backend CPU", fmt_ms(binary.backend)));
    f.push((
        "**agent binary + backend**",
        format!("**{}**", fmt_ms(bin_total)),
    ));
    f.push((
        "agent binary RSS (peak)",
        format!(
            "{:.1} MiB ({:.1})",
            common::mib(binary.rss),
            common::mib(binary.hwm)
        ),
    ));
    f.push(("floor (a) client CPU", fmt_ms(floor_a.0)));
    f.push(("floor (a) backend CPU", fmt_ms(floor_a.1)));
    f.push(("floor (b) /proc/PID/stat pass", fmt_ms(floor_b)));
    f.push(("floor (b') same, kept-open pread", fmt_ms(floor_b_pread)));
    f.push(("**floor a + b**", format!("**{}**", fmt_ms(floor))));
    f.push(("pg_activity CPU per refresh", fmt_ms(peer.cpu)));
    f.push(("pg_activity backend CPU", fmt_ms(peer.backend)));
    f.push((
        "**pg_activity + backend**",
        format!("**{}**", fmt_ms(peer_total)),
    ));
    f.push((
        "pg_activity RSS",
        format!("{:.1} MiB", common::mib(peer.rss)),
    ));
    f.push((
        "agent binary+backend / floor",
        format!("{:.2}×", bin_total / floor),
    ));
    f.push((
        "agent lib+backend / floor",
        format!("{:.2}×", agent_total / floor),
    ));
    f.push((
        "agent binary+backend / pg_activity",
        format!("{:.2}×", bin_total / peer_total.max(1e-9)),
    ));
    f.push((
        "target: ≤ 15 ms (binary+backend / 15 ms)",
        format!("{:.2}×", bin_total / 15.0),
    ));
    f.push((
        "target: RSS ≤ 20 MiB (peak / 20 MiB)",
        format!("{:.2}×", common::mib(binary.hwm) / 20.0),
    ));
    eprintln!("agent bench: level done");
    Ok(f)
}

fn fmt_ms(v: f64) -> String {
    format!("{v:.2} ms")
}

fn print_results(results: &[(usize, Figures)]) {
    let mut header: Vec<String> = vec!["per sample (median)".into()];
    header.extend(results.iter().map(|(n, _)| format!("{n} backends")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = match results.first() {
        None => Vec::new(),
        Some((_, first)) => (0..first.len())
            .map(|i| {
                let mut row = vec![first[i].0.to_string()];
                row.extend(results.iter().map(|(_, f)| f[i].1.clone()));
                row
            })
            .collect(),
    };
    table(&header, &rows);
    for (n, f) in results {
        let get = |label: &str| {
            f.iter()
                .find(|(l, _)| *l == label)
                .map(|(_, v)| v.trim_matches('*').to_string())
                .unwrap_or_default()
        };
        println!(
            "@@ agent+backend CPU/sample @{n} | {} | ≤ 15 ms | {} | vs floor {}, vs pg_activity {} ({})",
            get("**agent binary + backend**"),
            get("target: ≤ 15 ms (binary+backend / 15 ms)"),
            get("agent binary+backend / floor"),
            get("agent binary+backend / pg_activity"),
            get("**pg_activity + backend**"),
        );
        println!(
            "@@ agent RSS @{n} | {} | ≤ 20 MiB | {} | pg_activity {}",
            get("agent binary RSS (peak)"),
            get("target: RSS ≤ 20 MiB (peak / 20 MiB)"),
            get("pg_activity RSS"),
        );
    }
    println!();
}

/// Medians per sample, in ms.
struct LibCost {
    client: f64,
    backend: f64,
    sessions: usize,
    processes: usize,
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn sampler_costs(url: &str, samples: usize, warmup: u64) -> anyhow::Result<LibCost> {
    current_thread()?.block_on(async {
        let mut sampler = Sampler::new(InstanceConfig::parse(Some("bench"), url)?, 1024)?;
        sampler.sample().await.context("first sample")?;
        for _ in 0..warmup {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sampler.sample().await?;
        }
        let (control, conn) = url
            .parse::<tokio_postgres::Config>()?
            .connect(NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let backend = backend_of(&control, "bench-sampler").await?;
        drop(control);
        let (mut client, mut server) = (Vec::new(), Vec::new());
        let (mut sessions, mut processes) = (0, 0);
        for _ in 0..samples {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (c0, b0) = (thread_cpu_ns(), cpu_of(&backend));
            let snapshot = sampler.sample().await?;
            sessions = snapshot.sessions.len();
            processes = snapshot.processes.len();
            drop(snapshot);
            let (c1, b1) = (thread_cpu_ns(), cpu_of(&backend));
            client.push(ms(c1 - c0));
            server.push(ms(b1 - b0));
        }
        Ok(LibCost {
            client: median(&client),
            backend: median(&server),
            sessions,
            processes,
        })
    })
}

/// Floor (a): (client, backend) medians in ms.
fn query_floor(url: &str, samples: usize) -> anyhow::Result<(f64, f64)> {
    current_thread()?.block_on(async {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.application_name("bench-floor");
        let (client, conn) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int4, pg_backend_pid()",
                &[],
            )
            .await?;
        let version = row.get::<_, i32>(0) as u32;
        let backend = vec![row.get::<_, i32>(1)];
        let stmt = client
            .prepare(&pgtrail_agent::pg::activity::activity_sql(version, 1024))
            .await?;
        client.query(&stmt, &[]).await?;
        let (mut c, mut b) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (c0, b0) = (thread_cpu_ns(), cpu_of(&backend));
            let rows = client.query(&stmt, &[]).await?;
            drop(rows);
            let (c1, b1) = (thread_cpu_ns(), cpu_of(&backend));
            c.push(ms(c1 - c0));
            b.push(ms(b1 - b0));
        }
        Ok((median(&c), median(&b)))
    })
}

/// Floor (b) and (b'): medians in ms, and the number of processes.
fn proc_floor(postmaster: i32, samples: usize) -> (f64, f64, usize) {
    let mut open_read = Vec::new();
    let mut n = 0;
    for _ in 0..samples {
        common::pause(Duration::from_millis(100));
        let c0 = thread_cpu_ns();
        let mut pids = common::children(postmaster);
        pids.push(postmaster);
        let mut bytes = 0;
        for pid in &pids {
            bytes += std::fs::read(format!("/proc/{pid}/stat")).map_or(0, |b| b.len());
        }
        let c1 = thread_cpu_ns();
        assert!(bytes > 0);
        n = pids.len();
        open_read.push(ms(c1 - c0));
    }
    let mut pids = common::children(postmaster);
    pids.push(postmaster);
    let files: Vec<File> = pids
        .iter()
        .filter_map(|p| File::open(format!("/proc/{p}/stat")).ok())
        .collect();
    let mut pread = Vec::new();
    let mut buf = vec![0u8; 1024];
    for _ in 0..samples {
        common::pause(Duration::from_millis(100));
        let c0 = thread_cpu_ns();
        let mut bytes = 0;
        for f in &files {
            bytes += f.read_at(&mut buf, 0).unwrap_or(0);
        }
        let c1 = thread_cpu_ns();
        assert!(bytes > 0);
        pread.push(ms(c1 - c0));
    }
    (median(&open_read), median(&pread), n)
}

/// A process measured over windows: medians per sample or refresh, in ms,
/// and its memory.
struct Windowed {
    cpu: f64,
    backend: f64,
    rss: u64,
    hwm: u64,
}

async fn agent_binary(
    url: &str,
    control: &Client,
    window: u64,
    windows: usize,
    warmup: u64,
) -> anyhow::Result<Windowed> {
    let dir = tempfile::tempdir()?;
    let collector = Collector::open(&dir.path().join("store"))?;
    let listener = Collector::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let collector = collector.clone();
        tokio::spawn(async move {
            collector
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let mut child = Command::new(bin("pgtrail-agent"))
        .args(["--pg", url, "--interval", "1s", "--host-name", "bench"])
        .arg("--collector")
        .arg(format!("http://{addr}"))
        .env("PGTRAIL_SPOOL_DIR", dir.path().join("spool"))
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start pgtrail-agent")?;
    let pid = child.id() as i32;
    let acked = |c: &Collector| -> u64 {
        c.history()
            .hosts(&Default::default())
            .map(|h| h.iter().map(|i| i.samples).sum())
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_secs(3 + warmup)).await;
    let backend = backend_of(control, "pgtrail-agent").await?;
    let (mut cpu, mut server) = (Vec::new(), Vec::new());
    for _ in 0..windows {
        let (c0, b0, s0) = (
            process_cpu_ns(pid).unwrap_or(0),
            cpu_of(&backend),
            acked(&collector),
        );
        tokio::time::sleep(Duration::from_secs(window)).await;
        let (c1, b1, s1) = (
            process_cpu_ns(pid).unwrap_or(0),
            cpu_of(&backend),
            acked(&collector),
        );
        let n = (s1 - s0).max(1) as f64;
        cpu.push(ms(c1 - c0) / n);
        server.push(ms(b1 - b0) / n);
    }
    let (rss, hwm) = rss_bytes(pid);
    let _ = child.kill();
    let _ = child.wait();
    let _ = stop.send(());
    serving.await??;
    if acked(&collector) == 0 {
        bail!("pgtrail-agent delivered no sample");
    }
    Ok(Windowed {
        cpu: median(&cpu),
        backend: median(&server),
        rss,
        hwm,
    })
}

async fn pg_activity(
    pg: &PgServer,
    control: &Client,
    window: u64,
    windows: usize,
) -> anyhow::Result<Windowed> {
    let socket = format!("pgtrail-bench-{}", std::process::id());
    let session = "pga";
    let command = format!(
        "pg_activity -h 127.0.0.1 -p {} -U postgres -d postgres --refresh 1",
        pg.port()
    );
    let status = Command::new("tmux")
        .args([
            "-L",
            &socket,
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "200",
            "-y",
            "60",
        ])
        .arg(&command)
        .env("TERM", "xterm-256color")
        .status()
        .context("cannot run tmux")?;
    if !status.success() {
        bail!("tmux new-session failed: {status}");
    }
    let result = measure_pg_activity(&socket, session, control, window, windows).await;
    let _ = Command::new("tmux")
        .args(["-L", &socket, "kill-server"])
        .status();
    result
}

async fn measure_pg_activity(
    socket: &str,
    session: &str,
    control: &Client,
    window: u64,
    windows: usize,
) -> anyhow::Result<Windowed> {
    let out = Command::new("tmux")
        .args([
            "-L",
            socket,
            "list-panes",
            "-t",
            session,
            "-F",
            "#{pane_pid}",
        ])
        .output()?;
    let pane: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("no tmux pane pid")?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let backend = backend_of(control, "pg_activity").await?;
    if backend.is_empty() {
        let screen = Command::new("tmux")
            .args(["-L", socket, "capture-pane", "-p", "-t", session])
            .output()?;
        bail!(
            "pg_activity has no backend; its screen:\n{}",
            String::from_utf8_lossy(&screen.stdout)
        );
    }
    let (mut cpu, mut server) = (Vec::new(), Vec::new());
    for _ in 0..windows {
        let (c0, b0) = (tree_cpu_ns(pane), cpu_of(&backend));
        tokio::time::sleep(Duration::from_secs(window)).await;
        let (c1, b1) = (tree_cpu_ns(pane), cpu_of(&backend));
        cpu.push(ms(c1 - c0) / window as f64);
        server.push(ms(b1 - b0) / window as f64);
    }
    let mut pids = vec![pane];
    let mut i = 0;
    while i < pids.len() {
        pids.extend(common::children(pids[i]));
        i += 1;
    }
    let rss = pids.iter().map(|&p| rss_bytes(p).0).sum();
    Ok(Windowed {
        cpu: median(&cpu),
        backend: median(&server),
        rss,
        hwm: rss,
    })
}
