//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir (as
//! the unprivileged `nobody` when run as root, since initdb refuses root),
//! started on a free loopback port, stopped and removed on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

use crate::bins::{effective_uid, free_port, pg_bin_dir, user_ids};

/// How many ports [`PgServer::start_with`] tries when the one it picked was
/// taken by someone else before the server could bind it.
const PORT_ATTEMPTS: usize = 3;

/// How long a started server gets to accept a first query.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A throwaway PostgreSQL server: initdb into a temp dir, started on a free
/// loopback TCP port (and a unix socket in its temp dir), stopped
/// (`pg_ctl stop -m immediate`) and removed on drop.
///
/// Its superuser is `postgres`, with `trust` authentication, in the
/// `postgres` database.
#[derive(Debug)]
pub struct PgServer {
    dir: TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The uid and gid the server's commands run as, when not ours.
    run_as: Option<(u32, u32)>,
}

impl PgServer {
    /// Starts a server with default settings.
    pub fn start() -> anyhow::Result<PgServer> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `postgresql.conf` settings, for example
    /// `("max_connections", "50")`; values are quoted as needed.
    pub fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<PgServer> {
        let bin = pg_bin_dir()?;
        let run_as = if effective_uid()? == 0 {
            Some(user_ids("nobody")?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("pgtrail-pg-")
            .tempdir_in("/tmp")
            .context("cannot create a temp dir in /tmp")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("cannot hand {} to nobody", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let mut server = PgServer {
            dir,
            data,
            bin,
            port: 0,
            run_as,
        };

        let out = server
            .command("initdb")
            .arg("-D")
            .arg(&server.data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .output()
            .with_context(|| format!("cannot run {}", server.bin.join("initdb").display()))?;
        check(&out, "initdb")?;
        server.append_settings(settings)?;

        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => break,
                Err(e) if attempt < PORT_ATTEMPTS && e.port_taken => continue,
                Err(e) => return Err(e.error),
            }
        }
        server.wait_until_ready()?;
        Ok(server)
    }

    /// The TCP port it listens on, on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory of the PostgreSQL binaries it runs.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// libpq-style URL for the superuser `postgres` over TCP:
    /// `postgresql://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Connects with tokio-postgres (`NoTls`) as `postgres`, with the given
    /// `application_name`. The connection task is spawned on the current
    /// tokio runtime, so this must be called inside one.
    pub async fn connect(&self, application_name: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url(), application_name).await
    }

    /// Runs `sql` (one or more statements) as the superuser on a
    /// connection of its own, closed afterwards.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        let client = self.connect("pgtrail-tests").await?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("cannot run {sql:?}"))?;
        Ok(())
    }

    /// Restarts the server (`pg_ctl restart -m fast`) on the same port and
    /// waits until it accepts connections again.
    pub fn restart(&self) -> anyhow::Result<()> {
        let from = self.log_len();
        let out = self
            .pg_ctl()
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-m", "fast", "-o", &self.server_options()])
            .arg("restart")
            .output()
            .context("cannot run pg_ctl")?;
        if !out.status.success() {
            bail!(
                "pg_ctl restart failed: {}\nserver log:\n{}",
                output_text(&out),
                self.log_since(from)
            );
        }
        self.wait_until_ready()
    }

    /// The postmaster's pid: the first line of `postmaster.pid`.
    pub fn postmaster_pid(&self) -> anyhow::Result<i32> {
        let path = self.data.join("postmaster.pid");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}: is the server running?", path.display()))?;
        let first = text.lines().next().unwrap_or("").trim();
        first
            .parse()
            .with_context(|| format!("bad pid {first:?} in {}", path.display()))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's command-line options: the port, loopback only, the
    /// unix socket in the temp dir, and no fsync.
    fn server_options(&self) -> String {
        format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        )
    }

    fn append_settings(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        if settings.is_empty() {
            return Ok(());
        }
        let path = self.data.join("postgresql.conf");
        let mut conf =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        conf.push_str("\n# pgtrail tests\n");
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        // Rewriting the file in place keeps its owner.
        fs::write(&path, conf).with_context(|| format!("cannot write {}", path.display()))
    }

    fn pg_ctl_start(&self) -> Result<(), StartError> {
        let from = self.log_len();
        let out = self
            .pg_ctl()
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o", &self.server_options()])
            .arg("start")
            .output()
            .map_err(|e| StartError {
                port_taken: false,
                error: anyhow!(e).context("cannot run pg_ctl"),
            })?;
        if out.status.success() {
            return Ok(());
        }
        let log = self.log_since(from);
        let port_taken = log.contains("could not bind") || log.contains("Address already in use");
        Err(StartError {
            port_taken,
            error: anyhow!(
                "pg_ctl start on port {} failed: {}\nserver log:\n{}",
                self.port,
                output_text(&out),
                log
            ),
        })
    }

    /// Checks that the server answers a query, retrying for a while. It
    /// runs on a thread of its own with its own runtime, so it works both
    /// inside and outside a tokio runtime.
    fn wait_until_ready(&self) -> anyhow::Result<()> {
        let url = self.url();
        let result = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let deadline = Instant::now() + READY_TIMEOUT;
                loop {
                    let error = match connect(&url, "pgtrail-tests-ready").await {
                        Ok(client) => match client.simple_query("SELECT 1").await {
                            Ok(_) => return Ok(()),
                            Err(e) => anyhow!(e),
                        },
                        Err(e) => e,
                    };
                    if Instant::now() >= deadline {
                        return Err(error);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .join()
        .map_err(|_| anyhow!("the readiness check panicked"))?;
        result.with_context(|| {
            format!(
                "PostgreSQL on port {} does not answer\nserver log:\n{}",
                self.port,
                self.log_since(0)
            )
        })
    }

    fn log_len(&self) -> u64 {
        fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    /// The last lines of the server log written after byte `from`.
    fn log_since(&self, from: u64) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(from).unwrap_or(0).min(log.len());
        let text = String::from_utf8_lossy(&log[start..]);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data);
        cmd
    }

    /// A PostgreSQL command, run as `nobody` when we are root, from the
    /// temp dir (which that user can enter).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path());
        cmd.env_remove("PGDATA").env_remove("PGPORT");
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let pid = self.postmaster_pid().ok();
        let stopped = self
            .pg_ctl()
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .output()
            .is_ok_and(|out| out.status.success());
        // A postmaster that outlived pg_ctl would hold its port with its
        // files gone; end it before the temp dir is removed.
        if let (false, Some(pid)) = (stopped, pid) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .output();
            }
        }
        // The TempDir removes the directory when it is dropped next.
    }
}

/// Why `pg_ctl start` failed, and whether another port might do.
struct StartError {
    port_taken: bool,
    error: anyhow::Error,
}

async fn connect(url: &str, application_name: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config
        .application_name(application_name)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim().to_string()
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, output_text(out));
    }
    Ok(())
}
