//! Append-only files of compressed blocks, one per instance and day, beside
//! sled: `segments/<instance>/<day>.seg`, the day counted from the Unix
//! epoch; and each instance's tail log, `segments/<instance>/open.log`
//! ([`super::tail`]). A block is written once, synced to disk before anything refers
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

    fn path(&self, instance: InstanceId, day: i64) -> PathBuf {
        self.instance_dir(instance).join(format!("{day}.seg"))
    }

    /// Appends `block` to the instance's file of `day` and syncs it;
    /// returns the offset it starts at.
    pub fn append(&self, instance: InstanceId, day: i64, block: &[u8]) -> Result<u64, StoreError> {
        let path = self.path(instance, day);
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

    /// The instance's tail log ([`super::tail`]), opened for appending
    /// (created if missing), its path and its bytes.
    pub fn open_log(&self, instance: InstanceId) -> Result<(File, PathBuf, Vec<u8>), StoreError> {
        let dir = self.instance_dir(instance);
        let path = dir.join("open.log");
        let open = || -> io::Result<(File, Vec<u8>)> {
            let created = !path.exists();
            fs::create_dir_all(&dir)?;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            if created {
                File::open(&dir)?.sync_all()?;
            }
            Ok((file, fs::read(&path)?))
        };
        let (file, bytes) = open().map_err(|e| failed(&path, e))?;
        Ok((file, path, bytes))
    }

    /// The `len` bytes at `offset` of the instance's file of `day`.
    pub fn read(
        &self,
        instance: InstanceId,
        day: i64,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.path(instance, day);
        let read = || -> io::Result<Vec<u8>> {
            let mut out = vec![0; len];
            File::open(&path)?.read_exact_at(&mut out, offset)?;
            Ok(out)
        };
        read().map_err(|e| failed(&path, e))
    }

    /// Removes the instance's files of days before `day`; returns how many.
    pub fn remove_before(&self, instance: InstanceId, day: i64) -> Result<u64, StoreError> {
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
                .and_then(|n| n.strip_suffix(".seg"))
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
        let a = segments.append(7, 20_000, b"first block").unwrap();
        let b = segments.append(7, 20_000, b"second").unwrap();
        let c = segments.append(7, 20_001, b"next day").unwrap();
        assert_eq!((a, b, c), (0, 11, 0));
        assert_eq!(segments.read(7, 20_000, b, 6).unwrap(), b"second");
        assert_eq!(segments.read(7, 20_001, c, 8).unwrap(), b"next day");
        assert_eq!(segments.bytes().unwrap(), 25);

        assert_eq!(segments.remove_before(7, 20_001).unwrap(), 1);
        assert_eq!(segments.remove_before(8, 20_001).unwrap(), 0);
        let gone = segments.read(7, 20_000, a, 11).unwrap_err().to_string();
        assert!(gone.contains("20000.seg"), "{gone}");
        assert_eq!(segments.read(7, 20_001, c, 8).unwrap(), b"next day");
    }
}
