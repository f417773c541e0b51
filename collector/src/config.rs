//! Collector configuration: a TOML file, overridden by environment and
//! flags.
//!
//! ```toml
//! listen = "0.0.0.0:7070"
//! data = "/var/lib/pgtrail"
//!
//! [retention]
//! samples = "7d"    # raw samples (at, ps)
//! history = "90d"   # rollups and episodes (every question over a window)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CollectorError;
use crate::retention::Retention;

/// Where the collector listens unless told otherwise (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Where the store lives unless told otherwise.
pub const DEFAULT_DATA: &str = "./pgtrail-data";

/// The collector's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address to serve gRPC on.
    pub listen: SocketAddr,
    /// The store's directory.
    pub data: PathBuf,
    /// How long history is kept.
    pub retention: Retention,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            data: PathBuf::from(DEFAULT_DATA),
            retention: Retention::default(),
        }
    }
}

impl Config {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> Result<Self, CollectorError> {
        let text = std::fs::read_to_string(path).map_err(|source| CollectorError::ConfigFile {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| {
            CollectorError::Config(format!("{}: {}", path.display(), one_line(&text, &e)))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = '127.0.0.1:1'\nretension = '7d'\n").unwrap();
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("retension"), "{msg}");
    }

    #[test]
    fn defaults_fill_the_rest() {
        let c: Config = toml::from_str("data = '/tmp/x'").unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.data, PathBuf::from("/tmp/x"));
        assert_eq!(c.retention, Retention::default());
        let c: Config = toml::from_str("[retention]\nsamples = '2d'\n").unwrap();
        assert_eq!(
            c.retention.samples,
            std::time::Duration::from_secs(2 * 86400)
        );
        assert_eq!(c.retention.history, crate::retention::DEFAULT_HISTORY);
    }
}
