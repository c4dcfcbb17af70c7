//! The snapshot file: a consistent image of one member's state, as
//! `Maintenance.Snapshot` streams it, `snapshot save` stores it and
//! `snapshot restore` reads it. It owns the format and nothing else: where
//! the records come from (a checkpoint) and where they go (a new data dir)
//! belong to the callers.
//!
//! ```text
//! "raftkv-snapshot\n"            16 bytes
//! version                        u32, big-endian (1)
//! record*                        u32 big-endian length > 0, then a peer.proto Record (cf, key, value)
//! 0                              u32: the end of the records
//! zero bytes                     up to a multiple of 512
//! SHA-256                        32 bytes, of everything before it
//! ```
//! The records are the key-value column family (etcd's `key` bucket) and
//! the replicated meta records, without this member's local ones, in key
//! order. The padding keeps etcd's framing: etcdctl's `snapshot save` takes
//! a file as complete only when its size modulo 512 is 32, the SHA-256.

use std::io::{self, Read, Write};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::mvcc::crc32c::Crc32c;
use crate::mvcc::revision::Revision;
use crate::peer::proto::Record;
use crate::storage::Cf;

pub const MAGIC: &[u8; 16] = b"raftkv-snapshot\n";
pub const VERSION: u32 = 1;
/// The payload is padded to a multiple of this (etcd's sector size check).
pub const ALIGN: u64 = 512;
pub const HASH_LEN: usize = 32;
/// A record larger than this is not one raftkv wrote (requests are at most
/// a few MiB): the file is corrupt.
const MAX_RECORD: u32 = 256 << 20;

/// The column family codes of records (shared with raft snapshots).
pub fn cf_code(cf: Cf) -> u32 {
    match cf {
        Cf::Raft => 0,
        Cf::Kv => 1,
        Cf::Meta => 2,
    }
}

pub fn cf_of(code: u32) -> Option<Cf> {
    match code {
        1 => Some(Cf::Kv),
        2 => Some(Cf::Meta),
        _ => None,
    }
}

/// Bytes one record takes in the file.
pub fn record_len(r: &Record) -> u64 {
    4 + r.encoded_len() as u64
}

/// The payload's size (everything but the hash) for records taking
/// `records_len` bytes in all.
pub fn payload_len(records_len: u64) -> u64 {
    (MAGIC.len() as u64 + 4 + records_len + 4).div_ceil(ALIGN) * ALIGN
}

/// Writes a payload and hashes it; the caller writes or sends the hash.
pub struct Encoder<W: Write> {
    out: W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Encoder<W> {
    pub fn new(out: W) -> io::Result<Self> {
        let mut e = Self { out, hash: Sha256::new(), written: 0 };
        e.put(MAGIC)?;
        e.put(&VERSION.to_be_bytes())?;
        Ok(e)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    pub fn record(&mut self, r: &Record) -> io::Result<()> {
        let bytes = r.encode_to_vec();
        self.put(&(bytes.len() as u32).to_be_bytes())?;
        self.put(&bytes)
    }

    /// Ends the records, pads, and returns the output and the SHA-256.
    pub fn finish(mut self) -> io::Result<(W, [u8; HASH_LEN])> {
        self.put(&0u32.to_be_bytes())?;
        let pad = self.written.div_ceil(ALIGN) * ALIGN - self.written;
        self.put(&vec![0u8; pad as usize])?;
        self.out.flush()?;
        Ok((self.out, self.hash.finalize().into()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a raftkv snapshot file (no {:?} header)", String::from_utf8_lossy(&MAGIC[..15]))]
    NotRaftkv,
    #[error("snapshot file version {0} is not one this raftkv reads (it reads {VERSION})")]
    Version(u32),
    #[error("snapshot file is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("expected sha256 {expected}, got {got}")]
    HashMismatch { expected: String, got: String },
}

/// Go's formatting of a byte slice (`[1 2 3]`), as etcd prints hashes.
fn go_bytes(b: &[u8]) -> String {
    let parts: Vec<String> = b.iter().map(u8::to_string).collect();
    format!("[{}]", parts.join(" "))
}

/// Whether a file of `size` bytes carries a trailing hash (etcd's rule: a
/// file does when its size modulo 512 is 32); its payload's length if so.
pub fn hashed_payload_len(size: u64) -> Option<u64> {
    (size % ALIGN == HASH_LEN as u64).then(|| size - HASH_LEN as u64)
}

/// Hashes what is read through it: the payload, read once for both its
/// records and its hash. `verify` then reads the hash that follows.
pub struct Hashing<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hash: Sha256::new(), read: 0 }
    }

    /// Bytes read (and hashed) so far.
    pub fn read_bytes(&self) -> u64 {
        self.read
    }

    /// Reads the SHA-256 that follows the payload and compares it with the
    /// hash of what was read.
    pub fn verify(mut self) -> Result<(), FormatError> {
        let mut expected = [0u8; HASH_LEN];
        self.inner.read_exact(&mut expected)?;
        let got: [u8; HASH_LEN] = self.hash.finalize().into();
        if got != expected {
            return Err(FormatError::HashMismatch { expected: go_bytes(&expected), got: go_bytes(&got) });
        }
        Ok(())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Checks a file's trailing SHA-256 against its payload. Returns the
/// payload's length.
pub fn verify_hash(file: impl Read, size: u64, mut progress: impl FnMut(u64)) -> Result<u64, FormatError> {
    let payload = hashed_payload_len(size).ok_or(FormatError::MissingHash)?;
    let mut input = Hashing::new(file);
    let mut left = payload;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        input.read_exact(&mut buf[..n])?;
        left -= n as u64;
        progress(payload - left);
    }
    input.verify()?;
    Ok(payload)
}

/// Reads the records of a payload, in order.
pub struct Decoder<R: Read> {
    input: R,
    done: bool,
}

impl<R: Read> Decoder<R> {
    pub fn new(mut input: R) -> Result<Self, FormatError> {
        let mut magic = [0u8; 16];
        input.read_exact(&mut magic).map_err(|_| FormatError::NotRaftkv)?;
        if &magic != MAGIC {
            return Err(FormatError::NotRaftkv);
        }
        let mut v = [0u8; 4];
        input.read_exact(&mut v)?;
        let version = u32::from_be_bytes(v);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        Ok(Self { input, done: false })
    }

    pub fn get_ref(&self) -> &R {
        &self.input
    }

    /// The next record; None after the last.
    pub fn next_record(&mut self) -> Result<Option<Record>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.input
            .read_exact(&mut len)
            .map_err(|e| FormatError::Corrupt(format!("truncated before the end of the records ({e})")))?;
        let len = u32::from_be_bytes(len);
        if len == 0 {
            self.done = true;
            return Ok(None);
        }
        if len > MAX_RECORD {
            return Err(FormatError::Corrupt(format!("a record of {len} bytes")));
        }
        // Read as far as the input goes: a damaged length must not make a
        // file of a few bytes allocate MAX_RECORD.
        let mut buf = Vec::new();
        (&mut self.input).take(u64::from(len)).read_to_end(&mut buf).map_err(|e| FormatError::Corrupt(format!("truncated record ({e})")))?;
        if buf.len() < len as usize {
            return Err(FormatError::Corrupt(format!("truncated record ({} of {len} bytes)", buf.len())));
        }
        let r = Record::decode(buf.as_slice()).map_err(|e| FormatError::Corrupt(format!("undecodable record: {e}")))?;
        if cf_of(r.cf).is_none() {
            return Err(FormatError::Corrupt(format!("a record of unknown column family {}", r.cf)));
        }
        Ok(Some(r))
    }
}

/// What `snapshot status` prints, computed as etcd computes it: a CRC-32C
/// over every record (column family name, key, value) in file order, the
/// highest main revision in the key-value records, every record counted,
/// and the payload's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

pub fn status(input: impl Read, payload_len: u64) -> Result<Status, FormatError> {
    let mut d = Decoder::new(input)?;
    let mut crc = Crc32c::new();
    let mut st = Status { total_size: payload_len, ..Default::default() };
    let mut last_cf = None;
    while let Some(r) = d.next_record()? {
        let cf = cf_of(r.cf).unwrap_or(Cf::Meta);
        // etcd hashes each bucket's name once, before its entries.
        if last_cf != Some(cf) {
            crc.update(cf.name().as_bytes());
            last_cf = Some(cf);
        }
        crc.update(&r.key);
        crc.update(&r.value);
        if cf == Cf::Kv
            && let Some((rev, _)) = Revision::from_bytes(&r.key)
        {
            st.revision = st.revision.max(rev.main);
        }
        st.total_key += 1;
    }
    st.hash = crc.finish();
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cf: Cf, k: &[u8], v: &[u8]) -> Record {
        Record { cf: cf_code(cf), key: k.to_vec(), value: v.to_vec() }
    }

    fn file(records: &[Record]) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new()).expect("encoder");
        for r in records {
            e.record(r).expect("record");
        }
        let (mut out, hash) = e.finish().expect("finish");
        out.extend_from_slice(&hash);
        out
    }

    #[test]
    fn a_file_round_trips_with_etcds_framing() {
        let records = vec![
            rec(Cf::Kv, &Revision::new(2, 0).to_bytes(false), b"kv2"),
            rec(Cf::Kv, &Revision::new(3, 0).to_bytes(true), b"kv3"),
            rec(Cf::Meta, b"mvcc/current_rev", &3u64.to_be_bytes()),
        ];
        let bytes = file(&records);
        assert_eq!(bytes.len() as u64 % ALIGN, HASH_LEN as u64, "etcdctl's completeness check");
        let expected_len: u64 = records.iter().map(record_len).sum();
        assert_eq!(bytes.len() as u64, payload_len(expected_len) + HASH_LEN as u64);
        let payload = verify_hash(bytes.as_slice(), bytes.len() as u64, |_| {}).expect("hash");
        let mut d = Decoder::new(&bytes[..payload as usize]).expect("decoder");
        let mut back = Vec::new();
        while let Some(r) = d.next_record().expect("record") {
            back.push(r);
        }
        assert_eq!(back, records);
        let st = status(&bytes[..payload as usize], payload).expect("status");
        assert_eq!((st.revision, st.total_key, st.total_size), (3, 3, payload));
        let mut crc = Crc32c::new();
        for part in [&b"kv"[..], &records[0].key, b"kv2", &records[1].key, b"kv3", b"meta", &records[2].key, &records[2].value] {
            crc.update(part);
        }
        assert_eq!(st.hash, crc.finish());
    }

    #[test]
    fn damage_is_found() {
        let bytes = file(&[rec(Cf::Kv, &Revision::new(2, 0).to_bytes(false), b"value")]);
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert!(matches!(
            verify_hash(flipped.as_slice(), flipped.len() as u64, |_| {}),
            Err(FormatError::HashMismatch { .. })
        ));
        let truncated = &bytes[..bytes.len() - 100];
        assert!(matches!(verify_hash(truncated, truncated.len() as u64, |_| {}), Err(FormatError::MissingHash)));
        assert!(matches!(Decoder::new(&b"\x00\x00\x00\x00bolt"[..]), Err(FormatError::NotRaftkv)));
        // A payload cut inside its records.
        let mut d = Decoder::new(&bytes[..24]).expect("header");
        assert!(matches!(d.next_record(), Err(FormatError::Corrupt(_))));
    }
}
