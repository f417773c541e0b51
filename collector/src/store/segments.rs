//! Append-only files of compressed blocks, one per instance, day and
//! [`Holding`], beside sled: `segments/<instance>/<day>.seg` (samples) and
//! `<day>.eps` (closed episodes), the day counted from the Unix epoch;
//! and each instance's tail log, `segments/<instance>/open.log`
//! ([`super::tail`]). Samples and episodes are kept in files of their own
//! because they expire at different horizons. A block is written once, synced to disk before anything refers
//! to it, and read back by offset and length; sled holds the index
//! ([`super::sealed`]). A crash between a block's write and its index entry
//! leaves bytes nothing refers to at the end of a file, which reads never
//! reach. Retention removes whole files once every block in them has
//! expired.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pgtrail_proto::time::Micros;

use super::keys::InstanceId;
use super::StoreError;

/// A day in microseconds: the span of one file.
pub const DAY: Micros = 86_400_000_000;

/// What a segment file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Sealed minutes of samples ([`super::sealed`]).
    Samples,
    /// Closed episodes, a block per kind and minute ([`super::episode_blocks`]).
    Episodes,
}

impl Holding {
    fn extension(self) -> &'static str {
        match self {
            Holding::Samples => "seg",
            Holding::Episodes => "eps",
        }
    }
}

/// The directory of segment files.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
}

impl Segments {
    /// The segment directory under a store's directory, created if missing.
    pub fn open(store_dir: &Path) -> Result<Self, StoreError> {
        let dir = store_dir.join("segments");
        fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
        Ok(Self { dir })
    }

    /// The day (since the epoch) holding time `t`.
    pub fn day_of(t: Micros) -> i64 {
        t.div_euclid(DAY)
    }

    fn instance_dir(&self, instance: InstanceId) -> PathBuf {
        self.dir.join(instance.to_string())
    }

    fn path(&self, instance: InstanceId, day: i64, holding: Holding) -> PathBuf {
        self.instance_dir(instance)
            .join(format!("{day}.{}", holding.extension()))
    }

    /// Appends `block` to the instance's file of `day` and syncs it;
    /// returns the offset it starts at.
    pub fn append(
        &self,
        instance: InstanceId,
        (day, holding): (i64, Holding),
        block: &[u8],
    ) -> Result<u64, StoreError> {
        let path = self.path(instance, day, holding);
        let created = !path.exists();
        if created {
            let dir = self.instance_dir(instance);
            fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
        }
        let write = || -> io::Result<u64> {
            let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
            let offset = file.metadata()?.len();
            file.write_all(block)?;
            file.sync_data()?;
            if created {
                // The new file's name is durable only once its directory is.
                File::open(self.instance_dir(instance))?.sync_all()?;
            }
            Ok(offset)
        };
        write().map_err(|e| failed(&path, e))
    }

    /// The instance's tail log ([`super::tail`]), opened for reading and
    /// appending (created if missing), its path and its bytes.
    pub fn open_log(&self, instance: InstanceId) -> Result<(File, PathBuf, Vec<u8>), StoreError> {
        let dir = self.instance_dir(instance);
        let path = dir.join("open.log");
        let open = || -> io::Result<(File, Vec<u8>)> {
            let created = !path.exists();
            fs::create_dir_all(&dir)?;
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            if created {
                File::open(&dir)?.sync_all()?;
            }
            Ok((file, fs::read(&path)?))
        };
        let (file, bytes) = open().map_err(|e| failed(&path, e))?;
        Ok((file, path, bytes))
    }

    /// Replaces the instance's tail log with one holding `bytes`, whole or
    /// not at all (written beside it, synced, renamed over it); returns it
    /// as [`Segments::open_log`] does.
    pub fn replace_log(
        &self,
        instance: InstanceId,
        bytes: Vec<u8>,
    ) -> Result<(File, PathBuf, Vec<u8>), StoreError> {
        let dir = self.instance_dir(instance);
        let path = dir.join("open.log");
        let next = dir.join("open.log.next");
        let replace = || -> io::Result<File> {
            let mut file = File::create(&next)?;
            file.write_all(&bytes)?;
            file.sync_data()?;
            fs::rename(&next, &path)?;
            File::open(&dir)?.sync_all()?;
            OpenOptions::new().read(true).append(true).open(&path)
        };
        let file = replace().map_err(|e| failed(&path, e))?;
        Ok((file, path, bytes))
    }

    /// The `len` bytes at `offset` of the instance's file of `day`.
    pub fn read(
        &self,
        instance: InstanceId,
        (day, holding): (i64, Holding),
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.path(instance, day, holding);
        let read = || -> io::Result<Vec<u8>> {
            let mut out = vec![0; len];
            File::open(&path)?.read_exact_at(&mut out, offset)?;
            Ok(out)
        };
        read().map_err(|e| failed(&path, e))
    }

    /// Removes the instance's files of days before `day` holding
    /// `holding`; returns how many.
    pub fn remove_before(
        &self,
        instance: InstanceId,
        (day, holding): (i64, Holding),
    ) -> Result<u64, StoreError> {
        let dir = self.instance_dir(instance);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(failed(&dir, e)),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry.map_err(|e| failed(&dir, e))?.path();
            let file_day = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(holding.extension()))
                .and_then(|n| n.strip_suffix('.'))
                .and_then(|n| n.parse::<i64>().ok());
            if file_day.is_some_and(|d| d < day) {
                fs::remove_file(&path).map_err(|e| failed(&path, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The bytes of every segment file.
    pub fn bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        let instances = fs::read_dir(&self.dir).map_err(|e| failed(&self.dir, e))?;
        for instance in instances {
            let dir = instance.map_err(|e| failed(&self.dir, e))?.path();
            if !dir.is_dir() {
                continue;
            }
            for file in fs::read_dir(&dir).map_err(|e| failed(&dir, e))? {
                let file = file.map_err(|e| failed(&dir, e))?;
                // Counted: tails too, a minute per instance.
                total += file.metadata().map_err(|e| failed(&file.path(), e))?.len();
            }
        }
        Ok(total)
    }
}

fn failed(path: &Path, source: io::Error) -> StoreError {
    StoreError::Segment {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_back_by_offset_and_files_go_by_day() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        let (day, next) = ((20_000, Holding::Samples), (20_001, Holding::Samples));
        let a = segments.append(7, day, b"first block").unwrap();
        let b = segments.append(7, day, b"second").unwrap();
        let c = segments.append(7, next, b"next day").unwrap();
        let e = segments
            .append(7, (20_000, Holding::Episodes), b"episodes")
            .unwrap();
        assert_eq!((a, b, c, e), (0, 11, 0, 0));
        assert_eq!(segments.read(7, day, b, 6).unwrap(), b"second");
        assert_eq!(segments.read(7, next, c, 8).unwrap(), b"next day");
        assert_eq!(segments.bytes().unwrap(), 33);

        assert_eq!(segments.remove_before(7, next).unwrap(), 1);
        assert_eq!(segments.remove_before(8, next).unwrap(), 0);
        let gone = segments.read(7, day, a, 11).unwrap_err().to_string();
        assert!(gone.contains("20000.seg"), "{gone}");
        assert_eq!(segments.read(7, next, c, 8).unwrap(), b"next day");
        // Episodes go by their own horizon.
        let episodes = (20_000, Holding::Episodes);
        assert_eq!(segments.read(7, episodes, e, 8).unwrap(), b"episodes");
        assert_eq!(
            segments
                .remove_before(7, (20_001, Holding::Episodes))
                .unwrap(),
            1
        );
        assert!(segments.read(7, episodes, e, 8).is_err());
    }

    #[test]
    fn a_replaced_log_holds_the_new_bytes_and_appends_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        let (mut file, path, bytes) = segments.open_log(3).unwrap();
        assert!(bytes.is_empty());
        file.write_all(b"old entries").unwrap();
        let (mut file, same, bytes) = segments.replace_log(3, b"checkpoint".to_vec()).unwrap();
        assert_eq!((same, bytes.as_slice()), (path.clone(), &b"checkpoint"[..]));
        file.write_all(b"+next").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"checkpoint+next");
        assert!(!path.with_file_name("open.log.next").exists());
    }
}
