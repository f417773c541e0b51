//! One spool segment file: a run of framed records, appended to and read
//! back by offset.
//!
//! A record is `len: u32 LE | checksum: u64 LE | payload (len bytes)`, the
//! checksum an FNV-1a 64 of the payload, and the payload a self-contained
//! protobuf `pb::Snapshot` (every query text and the facts inline). A torn
//! or corrupt record ends the segment: opening cuts any segment off at its
//! last whole record, and what followed it is lost (not counted as
//! dropped).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pgtrail_proto::intern::{StreamDecoder, StreamEncoder};
use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb;
use prost::Message;

use super::SpoolError;
use crate::wire::{Head, Rows};

/// Bytes before each payload.
pub const HEADER: u64 = 12;
/// The largest payload accepted when reading (a guard against garbage).
const MAX_RECORD: u32 = 256 << 20;

/// A record's place and identity, kept in memory for every spooled record.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Offset of the record's header in the file.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
    /// The snapshot's instance.
    pub instance: String,
    /// The snapshot's sequence number.
    pub seq: u64,
    /// The drops it reports (lost again if it is dropped itself).
    pub dropped_before: u64,
    /// Whether the collector acknowledged it.
    pub acked: bool,
}

/// One segment file and the records in it.
#[derive(Debug)]
pub struct Segment {
    /// Its number; older segments have lower ones. The file is named by
    /// the number it was created with (an emptied segment takes a new one).
    pub id: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its records, in file order.
    pub records: Vec<Meta>,
    /// Records not yet acknowledged.
    pub unacked: usize,
    path: PathBuf,
    file: File,
}

/// The file name of segment `id`.
pub fn file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The segment id a file name encodes, if it is a segment's.
pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// The whole record of a snapshot, header included: `head` (the snapshot
/// without its rows: no sessions, no processes) around `rows`. The payload
/// is self-contained (every text and the facts inline).
pub fn frame(head: &Snapshot, rows: &Rows) -> Vec<u8> {
    debug_assert!(head.sessions.is_empty() && head.processes.is_empty());
    let head = Head::new(StreamEncoder::default().encode(head));
    let len = head.encoded_len(rows);
    let mut frame = Vec::with_capacity(HEADER as usize + len);
    frame.resize(HEADER as usize, 0);
    head.encode(rows, &mut frame);
    let sum = checksum(&frame[HEADER as usize..]);
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    frame[4..HEADER as usize].copy_from_slice(&sum.to_le_bytes());
    frame
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn decode(payload: &[u8]) -> Result<Snapshot, SpoolError> {
    let wire = pb::Snapshot::decode(payload).map_err(|_| SpoolError::Corrupt)?;
    StreamDecoder::decode_alone(wire).map_err(|_| SpoolError::Corrupt)
}

impl Segment {
    /// Creates an empty segment `id` in `dir`.
    pub fn create(dir: &Path, id: u64) -> Result<Self, SpoolError> {
        let path = dir.join(file_name(id));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| SpoolError::io("create", &path, e))?;
        Ok(Self {
            id,
            bytes: 0,
            records: Vec::new(),
            unacked: 0,
            path,
            file,
        })
    }

    /// Opens segment `id` and indexes its whole records; a torn tail is cut
    /// off.
    pub fn open(dir: &Path, id: u64) -> Result<Self, SpoolError> {
        let path = dir.join(file_name(id));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| SpoolError::io("open", &path, e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| SpoolError::io("read", &path, e))?;
        let mut records = Vec::new();
        let mut at = 0usize;
        while let Some((meta, next)) = parse_at(&data, at) {
            records.push(meta);
            at = next;
        }
        if at < data.len() {
            // A write a crash tore (at the end of the newest segment), or
            // damage: what follows cannot be read, so it cannot be counted.
            tracing::warn!(
                path = %path.display(),
                records = records.len(),
                cut_bytes = data.len() - at,
                "a spool segment ends in a record that does not read: cut off there"
            );
            file.set_len(at as u64)
                .and_then(|_| file.seek(SeekFrom::End(0)).map(|_| ()))
                .map_err(|e| SpoolError::io("truncate", &path, e))?;
        }
        Ok(Self {
            id,
            bytes: at as u64,
            unacked: records.len(),
            records,
            path,
            file,
        })
    }

    /// Appends the record `frame` (from [`frame`]) of `snapshot`.
    pub fn append(&mut self, snapshot: &Snapshot, frame: &[u8]) -> Result<(), SpoolError> {
        self.file
            .write_all(frame)
            .map_err(|e| SpoolError::io("write", &self.path, e))?;
        self.records.push(Meta {
            offset: self.bytes,
            len: (frame.len() as u64 - HEADER) as u32,
            instance: snapshot.instance.clone(),
            seq: snapshot.seq,
            dropped_before: snapshot.dropped_before,
            acked: false,
        });
        self.bytes += frame.len() as u64;
        self.unacked += 1;
        Ok(())
    }

    /// Reads record `index` back.
    pub fn read(&self, index: usize) -> Result<Snapshot, SpoolError> {
        let meta = &self.records[index];
        let mut payload = vec![0; meta.len as usize];
        self.file
            .read_exact_at(&mut payload, meta.offset + HEADER)
            .map_err(|e| SpoolError::io("read", &self.path, e))?;
        decode(&payload)
    }

    /// Flushes the file to disk.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.file
            .sync_data()
            .map_err(|e| SpoolError::io("sync", &self.path, e))
    }

    /// Drops every record (truncates the file) and takes the number `id`;
    /// the file keeps its name.
    pub fn empty(&mut self, id: u64) -> Result<(), SpoolError> {
        self.file
            .set_len(0)
            .map_err(|e| SpoolError::io("truncate", &self.path, e))?;
        self.id = id;
        self.bytes = 0;
        self.records.clear();
        self.unacked = 0;
        Ok(())
    }

    /// Deletes the file.
    pub fn remove(self) -> Result<(), SpoolError> {
        fs::remove_file(&self.path).map_err(|e| SpoolError::io("remove", &self.path, e))
    }
}

/// The record at `at` and where the next one starts, if it is whole and
/// its checksum matches.
fn parse_at(data: &[u8], at: usize) -> Option<(Meta, usize)> {
    let header = data.get(at..at + HEADER as usize)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?);
    let sum = u64::from_le_bytes(header[4..12].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let start = at + HEADER as usize;
    let payload = data.get(start..start + len as usize)?;
    if checksum(payload) != sum {
        return None;
    }
    let snapshot = decode(payload).ok()?;
    let meta = Meta {
        offset: at as u64,
        len,
        instance: snapshot.instance,
        seq: snapshot.seq,
        dropped_before: snapshot.dropped_before,
        acked: false,
    };
    Some((meta, start + len as usize))
}
