//! Fixtures for pgtrail's end-to-end tests.
//!
//! pgtrail is only worth something if it reads real PostgreSQL servers
//! correctly, so its end-to-end tests run against real ones and drive the
//! real binaries. This crate provides what they share:
//!
//! - [`PgServer`]: a throwaway PostgreSQL server. `initdb` into a fresh
//!   directory under `/tmp`, started with `pg_ctl` on a free loopback TCP
//!   port (and a unix socket in the same directory), checked by connecting,
//!   then stopped (`pg_ctl stop -m immediate`) and removed when dropped.
//! - [`bin`]: the path of a workspace binary (`pgtrail`, `pgtrail-agent`,
//!   `pgtrail-collector`) built next to the running test executable.
//! - [`free_port`]: a free TCP port on `127.0.0.1`, for the collectors and
//!   recorders the tests start.
//!
//! # Where PostgreSQL comes from
//!
//! The directory named by the `PGTRAIL_PG_BIN` environment variable when it
//! is set (it must hold `initdb`, `pg_ctl` and `postgres`), otherwise the
//! highest-numbered `/usr/lib/postgresql/*/bin` that has `initdb`, which is
//! where Debian's packages put it. `scripts/install-deps` installs one.
//!
//! # Running as root
//!
//! `initdb` and `postgres` refuse to run as root. When the tests run as
//! root (effective uid 0, read from `/proc/self/status`), the server's
//! commands run as the unprivileged `nobody` user instead and its directory
//! is handed to that user; root can still read the log and remove the files
//! afterwards. As any other user they run as that user.
//!
//! # Example
//!
//! ```no_run
//! use pgtrail_tests::PgServer;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let pg = PgServer::start_with(&[("max_connections", "40")])?;
//! pg.execute("CREATE TABLE t (x int)").await?;
//! let client = pg.connect("my-test").await?;
//! let row = client
//!     .query_one("SELECT current_setting('max_connections')", &[])
//!     .await?;
//! assert_eq!(row.get::<_, String>(0), "40");
//! // Dropping `pg` stops the server and removes its directory.
//! # Ok(())
//! # }
//! ```
//!
//! The binaries that [`bin`] finds are built by `cargo build --workspace
//! --bins`, which `scripts/test` runs before `cargo test --workspace`.
#![warn(missing_docs)]

mod bins;
mod pg;

pub use bins::{bin, free_port};
pub use pg::PgServer;
