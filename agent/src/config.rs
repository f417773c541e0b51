//! Agent configuration: a TOML file, overridden by environment and flags.
//!
//! ```toml
//! collector = "http://collector.example:7070"
//! interval = "1s"
//!
//! [[instance]]
//! name = "main"                     # optional; defaults to the port
//! url = "postgresql://pgtrail@%2Fvar%2Frun%2Fpostgresql:5432/postgres"
//! ```
//!
//! Unknown keys are refused with their line, so a typo never silently falls
//! back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::AgentError;

/// Where agents send snapshots unless told otherwise.
pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:7070";
/// How often each instance is sampled.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Query texts are cut to this many characters on the server.
pub const DEFAULT_QUERY_MAX_LEN: usize = 1024;
/// Snapshots sent to the collector ahead of its acknowledgements.
pub const DEFAULT_QUEUE_CAPACITY: usize = 300;
/// How often each process's PSS/USS (`smaps_rollup`, ~0.3 ms a process) is
/// read.
pub const DEFAULT_PSS_INTERVAL: Duration = Duration::from_secs(30);
/// Where unacknowledged snapshots wait on disk, unless `$STATE_DIRECTORY`
/// (set by systemd's `StateDirectory=`) says otherwise.
pub const DEFAULT_SPOOL_DIR: &str = "pgtrail-agent-spool";
/// The most the spool holds on disk; beyond it the oldest are dropped.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 << 20;
/// The smallest spool accepted.
pub const MIN_SPOOL_BYTES: u64 = 64 << 10;
/// The application_name the agent's own connections carry.
pub const APPLICATION_NAME: &str = "pgtrail-agent";

/// The agent's settings, as read from a file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The collector's URL.
    pub collector: String,
    /// The name this host reports; defaults to the kernel's host name.
    pub host_name: Option<String>,
    /// How often each instance is sampled.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Query texts are cut to this many characters.
    pub query_max_len: usize,
    /// Snapshots sent ahead of the collector's acknowledgements.
    pub queue_capacity: usize,
    /// How often each process's PSS/USS is read.
    #[serde(with = "humantime_serde")]
    pub pss_interval: Duration,
    /// Replace literals in query texts with placeholders before they leave
    /// the host.
    pub normalize_queries: bool,
    /// The directory of the on-disk spool of unacknowledged snapshots.
    pub spool_dir: Option<PathBuf>,
    /// The most bytes the spool holds; the oldest snapshots are dropped
    /// (counted, logged and reported) beyond it.
    pub spool_max_bytes: u64,
    /// The instances to watch.
    #[serde(rename = "instance")]
    pub instances: Vec<InstanceSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            collector: DEFAULT_COLLECTOR.to_string(),
            host_name: None,
            interval: DEFAULT_INTERVAL,
            query_max_len: DEFAULT_QUERY_MAX_LEN,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            pss_interval: DEFAULT_PSS_INTERVAL,
            normalize_queries: false,
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            instances: Vec::new(),
        }
    }
}

/// One instance as written in the config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// The name it is known by on this host; defaults to its port.
    pub name: Option<String>,
    /// A libpq connection string or URL.
    pub url: String,
}

/// One instance, ready to connect to.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// The name it is known by on this host.
    pub name: String,
    /// How to connect.
    pub pg: tokio_postgres::Config,
}

impl Config {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::ConfigFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))
    }

    /// Parses config text.
    pub fn from_toml(text: &str) -> Result<Self, AgentError> {
        toml::from_str(text).map_err(|e| AgentError::Config(one_line(text, &e)))
    }

    /// Checks the settings and parses every instance's connection string.
    pub fn instances(&self) -> Result<Vec<InstanceConfig>, AgentError> {
        if self.instances.is_empty() {
            return Err(AgentError::Config(
                "no instance to watch: give --pg URL or an [[instance]] in the config".into(),
            ));
        }
        if self.interval < crate::builder::MIN_INTERVAL {
            return Err(AgentError::Config(format!(
                "interval {} is too short (at least {})",
                humantime::format_duration(self.interval),
                humantime::format_duration(crate::builder::MIN_INTERVAL)
            )));
        }
        if self.spool_max_bytes < MIN_SPOOL_BYTES {
            return Err(AgentError::Config(format!(
                "spool_max_bytes {} is too small (at least {MIN_SPOOL_BYTES})",
                self.spool_max_bytes
            )));
        }
        if self.query_max_len == 0 || self.queue_capacity == 0 {
            return Err(AgentError::Config(
                "query_max_len and queue_capacity must be at least 1".into(),
            ));
        }
        let mut out: Vec<InstanceConfig> = Vec::new();
        for spec in &self.instances {
            let inst = InstanceConfig::parse(spec.name.as_deref(), &spec.url)?;
            if out.iter().any(|o| o.name == inst.name) {
                return Err(AgentError::Config(format!(
                    "two instances are named {:?}: give each a distinct name",
                    inst.name
                )));
            }
            out.push(inst);
        }
        Ok(out)
    }

    /// The spool directory: `spool_dir`, else `$STATE_DIRECTORY/spool`, else
    /// [`DEFAULT_SPOOL_DIR`] in the working directory.
    pub fn spool_dir(&self) -> PathBuf {
        if let Some(dir) = &self.spool_dir {
            return dir.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may list several, separated by colons.
            Some(dirs) => {
                PathBuf::from(dirs.to_string_lossy().split(':').next().unwrap_or(".")).join("spool")
            }
            None => PathBuf::from(DEFAULT_SPOOL_DIR),
        }
    }

    /// The host name to report.
    pub fn host_name(&self) -> String {
        self.host_name.clone().unwrap_or_else(local_host_name)
    }
}

impl InstanceConfig {
    /// Parses a connection string (URL or key=value). The name defaults to
    /// the port.
    pub fn parse(name: Option<&str>, url: &str) -> Result<Self, AgentError> {
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e| {
            AgentError::Config(format!(
                "invalid connection string {:?}: {e}",
                redact_password(url)
            ))
        })?;
        if pg.get_application_name().is_none() {
            pg.application_name(APPLICATION_NAME);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(5));
        }
        if pg.get_user().is_none() {
            pg.user(std::env::var("USER").unwrap_or_else(|_| "postgres".into()));
        }
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let name = name.map_or_else(|| port.to_string(), str::to_string);
        pgtrail_proto::model::validate_instance_name(&name)
            .map_err(|e| AgentError::Config(format!("instance name {name:?}: {e}")))?;
        Ok(Self { name, pg })
    }
}

/// A TOML error as one line: "line L, column C: message".
fn one_line(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// The kernel's host name.
pub fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A connection string with its password replaced, fit for messages.
pub fn redact_password(url: &str) -> String {
    if let Some(rest) = url.split_once("://") {
        if let Some((auth, host)) = rest.1.split_once('@') {
            if let Some((user, _)) = auth.split_once(':') {
                return format!("{}://{user}:***@{host}", rest.0);
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = Config::from_toml("[[instance]]\nurl = 'host=/tmp port=5433'\n").unwrap();
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.collector, DEFAULT_COLLECTOR);
        let inst = c.instances().unwrap();
        assert_eq!(inst[0].name, "5433");
        assert_eq!(inst[0].pg.get_application_name(), Some(APPLICATION_NAME));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let err = Config::from_toml("interval = '2s'\nintervall = '1s'\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("intervall"), "{msg}");
    }

    #[test]
    fn agent_depth_settings_parse_and_are_checked() {
        let c = Config::from_toml(
            "pss_interval = '10s'\nnormalize_queries = true\nspool_dir = '/tmp/s'\n\
             spool_max_bytes = 1000\n[[instance]]\nurl = 'host=/tmp'\n",
        )
        .unwrap();
        assert_eq!(c.pss_interval, Duration::from_secs(10));
        assert!(c.normalize_queries);
        assert_eq!(c.spool_dir(), PathBuf::from("/tmp/s"));
        let err = c.instances().unwrap_err().to_string();
        assert!(err.contains("spool_max_bytes 1000 is too small"), "{err}");
        assert_eq!(Config::default().spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
    }

    #[test]
    fn human_durations_parse() {
        let c = Config::from_toml("interval = '250ms'\n").unwrap();
        assert_eq!(c.interval, Duration::from_millis(250));
        assert!(Config::from_toml("interval = 'soon'\n").is_err());
    }

    #[test]
    fn bad_connection_strings_are_one_clear_error_without_the_password() {
        let err = InstanceConfig::parse(None, "postgresql://u:secret@h:notaport/db").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("invalid connection string"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let c = Config::from_toml(
            "[[instance]]\nurl = 'host=/tmp port=5432'\n[[instance]]\nurl = 'host=/run port=5432'\n",
        )
        .unwrap();
        assert!(c.instances().unwrap_err().to_string().contains("distinct"));
    }

    #[test]
    fn redaction_covers_both_forms() {
        assert_eq!(
            redact_password("postgres://a:b@h/d"),
            "postgres://a:***@h/d"
        );
        assert_eq!(
            redact_password("host=h password=x user=u"),
            "host=h password=*** user=u"
        );
    }
}
