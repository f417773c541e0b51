//! The binaries the tests run and what they need around them: the
//! workspace's own binaries, PostgreSQL's, the user to run PostgreSQL as,
//! and free ports.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Absolute path of a workspace binary (`pgtrail`, `pgtrail-agent`,
/// `pgtrail-collector`) built next to the running test executable.
///
/// Test executables live in `target/<profile>/deps/`; the binaries that
/// `cargo build --workspace --bins` builds live one level up, in
/// `target/<profile>/`, so this works whatever `CARGO_TARGET_DIR` is.
///
/// # Panics
///
/// When the binary is missing, with a message saying to build it with
/// `cargo build --workspace --bins` (`scripts/test` does).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let dir = profile_dir(&exe);
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's binaries first with \
         `cargo build --workspace --bins` (scripts/test does it before \
         running the tests)",
        path.display()
    );
    path
}

/// The `target/<profile>` directory of a test executable: the parent of
/// its `deps` directory, or its own directory when it is not in one.
fn profile_dir(exe: &Path) -> PathBuf {
    let dir = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent directory", exe.display()));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A free TCP port on `127.0.0.1`: binds port 0, reads the port the system
/// chose, and drops the listener.
///
/// Another process may take the port before the caller binds it; callers
/// that can retry (like [`crate::PgServer`]) do.
///
/// # Panics
///
/// When no port can be bound on the loopback address.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1");
    listener
        .local_addr()
        .expect("the address of a bound listener")
        .port()
}

/// `PGTRAIL_PG_BIN`, else the highest-numbered `/usr/lib/postgresql/*/bin`
/// that has `initdb`.
pub(crate) fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PGTRAIL_PG_BIN") {
        let dir = PathBuf::from(dir);
        if !dir.join("initdb").is_file() {
            bail!("PGTRAIL_PG_BIN={} has no initdb", dir.display());
        }
        return Ok(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("PostgreSQL not found: run scripts/install-deps or set PGTRAIL_PG_BIN"),
    }
}

/// The effective uid, from the `Uid:` line of `/proc/self/status`
/// (real, effective, saved, filesystem).
pub(crate) fn effective_uid() -> anyhow::Result<u32> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid: line in /proc/self/status")?;
    let euid = line
        .split_whitespace()
        .nth(1)
        .context("no effective uid in /proc/self/status")?;
    Ok(euid.parse()?)
}

/// The uid and gid of a user, from `/etc/passwd`.
pub(crate) fn user_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    let fields: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)
        .with_context(|| {
            format!("tests run as root run PostgreSQL as the `{name}` user, which does not exist")
        })?;
    Ok((fields[2].parse()?, fields[3].parse()?))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn binaries_are_found_beside_the_deps_directory() {
        assert_eq!(
            profile_dir(Path::new("/w/target/debug/deps/e2e-0123abcd")),
            PathBuf::from("/w/target/debug")
        );
        assert_eq!(
            profile_dir(Path::new("/w/target/release/deps/fixture-99")),
            PathBuf::from("/w/target/release")
        );
    }

    #[test]
    fn an_executable_outside_deps_looks_in_its_own_directory() {
        assert_eq!(
            profile_dir(Path::new("/w/target/debug/examples/demo")),
            PathBuf::from("/w/target/debug/examples")
        );
    }

    #[test]
    fn free_ports_can_be_bound_again() {
        // Another process may take a port between the two binds, which is
        // why callers retry; one of a few tries must succeed.
        let bound = (0..5).any(|_| {
            let port = free_port();
            assert_ne!(port, 0);
            TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        assert!(bound, "no port from free_port could be bound");
    }

    #[test]
    fn the_effective_uid_is_the_one_id_reports() {
        let out = Command::new("id").arg("-u").output().expect("id runs");
        let id: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(effective_uid().unwrap(), id);
    }

    #[test]
    fn users_are_looked_up_in_etc_passwd() {
        assert_eq!(user_ids("root").unwrap(), (0, 0));
        let err = user_ids("no-such-user-here").unwrap_err().to_string();
        assert!(err.contains("no-such-user-here"), "{err}");
    }
}
