//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir (as
//! the unprivileged `nobody` when run as root, since initdb refuses root),
//! started on a free loopback port, stopped and removed on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::free_port;

/// A running throwaway server.
#[derive(Debug)]
pub struct PgServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
}

impl PgServer {
    /// Starts a server with default settings.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `postgresql.conf` settings.
    pub fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let user = if effective_uid()? == 0 {
            Some(nobody()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("pgtrail-pg-")
            .tempdir_in("/tmp")
            .context("cannot create a temp dir")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let mut server = Self {
            dir,
            bin,
            port: 0,
            user,
        };
        let data = server.data_dir().to_path_buf();
        let out = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()?;
        check(&out, "initdb")?;
        let mut conf = String::from("\n# pgtrail tests\nfsync = off\n");
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path)?;
        text.push_str(&conf);
        fs::write(&conf_path, text)?;

        let mut last = None;
        for _ in 0..3 {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()?;
        if !out.status.success() {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the PostgreSQL binaries used.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A URL for the superuser `postgres` over TCP.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Connects as `postgres` with `application_name`; the connection runs
    /// on the current tokio runtime.
    pub async fn connect(&self, application_name: &str) -> anyhow::Result<tokio_postgres::Client> {
        let mut config: tokio_postgres::Config = self.url().parse()?;
        config.application_name(application_name);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("cannot connect to {}", self.url()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs SQL as the superuser on a short-lived connection.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        let client = self.connect("pgtrail-tests").await?;
        client.batch_execute(sql).await?;
        Ok(())
    }

    /// Restarts the server and waits until it accepts connections.
    pub fn restart(&self) -> anyhow::Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "-m", "fast", "stop"])
            .output()?;
        check(&out, "pg_ctl stop")?;
        self.pg_ctl_start()
    }

    /// The postmaster's pid (first line of postmaster.pid).
    pub fn postmaster_pid(&self) -> anyhow::Result<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid"))?;
        Ok(text.lines().next().unwrap_or("").trim().parse()?)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path());
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    }
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `PGTRAIL_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` with initdb.
fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PGTRAIL_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("PostgreSQL not found: run scripts/install-deps or set PGTRAIL_PG_BIN"),
    }
}

fn effective_uid() -> anyhow::Result<u32> {
    let status = fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("no Uid in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(2)
        .context("no effective uid")?
        .parse()?)
}

fn nobody() -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .context("tests run as root need the `nobody` user to run PostgreSQL")?;
    let fields: Vec<&str> = line.split(':').collect();
    Ok((fields[2].parse()?, fields[3].parse()?))
}
