//! A read-only reader of bbolt database files: etcd's backend
//! (`member/snap/db`) and the files etcd's `snapshot save` writes. It owns
//! the on-disk format (meta pages, page headers, branch and leaf pages,
//! overflow pages, inline buckets) and `snapshot status` as etcdctl 3.4
//! computes it over such a file. What etcd keeps in its buckets is
//! `etcd_import`'s.
//!
//! It must not write, and must not trust the file: every offset is checked,
//! and a damaged file is an error, never a panic, a hang or an allocation
//! larger than the file. Pages are read on demand with positioned reads, so
//! memory follows the tree's depth and the largest value, not the file's
//! size.
//!
//! All integers are little-endian: bbolt writes its structs in native byte
//! order, and etcd runs on little-endian machines (amd64, arm64).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::mvcc::crc32c::Crc32c;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;

const PAGE_HEADER: usize = 16;
/// Branch and leaf elements are both 16 bytes.
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
/// The meta struct follows the page header of pages 0 and 1.
const META_AT: usize = PAGE_HEADER;
const META_LEN: usize = 64;
/// The checksum covers the meta struct up to the checksum itself.
const META_SUMMED: usize = 56;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
/// A leaf element whose value is a bucket header.
const BUCKET_LEAF: u32 = 0x01;

/// Page sizes tried when meta page 0 is damaged and cannot give the page
/// size: the OS page sizes bbolt picks from by default.
const PAGE_SIZES: [u64; 8] = [4096, 8192, 16384, 65536, 32768, 2048, 1024, 512];
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 1 << 20;
/// A page with its overflow larger than this is damage, not data: it holds
/// one value at most, and etcd's values are a few MiB (raftkv's own
/// snapshot records stop at the same bound). Without a bound a damaged
/// header could make us allocate up to the file's size.
const MAX_SPAN: u64 = 256 << 20;
/// etcd's trees are a few levels deep; deeper is a cycle or damage.
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("reading the database: {0}")]
    Io(#[from] io::Error),
    /// bbolt's ErrInvalid: not a bbolt file (bad magic), as etcd prints it.
    #[error("invalid database")]
    Invalid,
    #[error("version mismatch")]
    VersionMismatch,
    #[error("checksum error")]
    Checksum,
    #[error("invalid database: page size {0} is not one bbolt writes")]
    PageSize(u32),
    #[error("database file is truncated: it has {size} bytes, its meta page counts {pages} pages of {page_size} bytes")]
    Truncated { size: u64, pages: u64, page_size: u64 },
    #[error("corrupt database: page {id} is out of range (the database has {pages} pages)")]
    PageOutOfRange { id: u64, pages: u64 },
    #[error("corrupt database: {0}")]
    Corrupt(String),
}

fn corrupt(at: Loc, what: impl fmt::Display) -> BoltError {
    BoltError::Corrupt(format!("{at}: {what}"))
}

/// Whether `head` (the first bytes of a file) starts like a bbolt database:
/// meta page 0's magic and version. The checksum is left to `Db::open`.
pub fn looks_like_bbolt(head: &[u8]) -> bool {
    le_u32(head, META_AT) == Some(MAGIC) && le_u32(head, META_AT + 4) == Some(VERSION)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    page_size: u32,
    /// The root bucket's root page.
    root: u64,
    /// The high-water mark: pages in use, the database's size in pages.
    pgid: u64,
    txid: u64,
}

/// Parses and validates the meta struct of a meta page (`page` starts at
/// the page), with bbolt's checks in bbolt's order.
fn parse_meta(page: &[u8]) -> Result<Meta, BoltError> {
    let m = page.get(META_AT..META_AT + META_LEN).ok_or(BoltError::Invalid)?;
    let field32 = |at| le_u32(m, at).ok_or(BoltError::Invalid);
    let field64 = |at| le_u64(m, at).ok_or(BoltError::Invalid);
    if field32(0)? != MAGIC {
        return Err(BoltError::Invalid);
    }
    if field32(4)? != VERSION {
        return Err(BoltError::VersionMismatch);
    }
    // bbolt accepts a zero checksum (files from before checksums), so a file
    // bbolt opens opens here too.
    let checksum = field64(META_SUMMED)?;
    if checksum != 0 && checksum != fnv1a64(&m[..META_SUMMED]) {
        return Err(BoltError::Checksum);
    }
    Ok(Meta { page_size: field32(8)?, root: field64(16)?, pgid: field64(40)?, txid: field64(48)? })
}

/// Where an element lives, for error messages.
#[derive(Debug, Clone, Copy)]
enum Loc {
    Page(u64),
    Inline,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Page(id) => write!(f, "page {id}"),
            Loc::Inline => f.write_str("an inline bucket's page"),
        }
    }
}

/// Where a bucket's tree starts: a page, or a leaf page stored inside the
/// bucket's value (an inline bucket, bbolt's form for small buckets).
enum Root<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

fn bucket_root<'a>(name: &[u8], value: &'a [u8]) -> Result<Root<'a>, BoltError> {
    let root = le_u64(value, 0).filter(|_| value.len() >= BUCKET_HEADER).ok_or_else(|| {
        let name = String::from_utf8_lossy(name);
        BoltError::Corrupt(format!("bucket {name:?}: its value has {} bytes, fewer than a bucket header", value.len()))
    })?;
    Ok(match root {
        0 => Root::Inline(&value[BUCKET_HEADER..]),
        id => Root::Page(id),
    })
}

/// What `etcdctl snapshot status` (3.4) prints for a bbolt file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EtcdStatus {
    /// CRC-32C of every bucket's name, keys and values.
    pub hash: u32,
    /// The main revision of the last key in bucket `key`.
    pub revision: i64,
    /// Entries across all buckets (3.4 and 3.5 count entries, not user keys).
    pub total_key: u64,
    /// bbolt's tx.Size(): pages in use times the page size.
    pub total_size: u64,
}

/// An open bbolt file, read as of its newest valid meta page.
#[derive(Debug)]
pub struct Db {
    file: File,
    page_size: u64,
    meta: Meta,
}

/// The callback of a tree walk: element flags, key, value; false stops.
type Visit<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<bool, BoltError> + 'a;

impl Db {
    /// Opens a bbolt file read-only: finds the page size, validates both
    /// meta pages and reads as of the valid one with the higher txid, as
    /// bbolt does. Bytes past the pages in use (the SHA-256 `snapshot save`
    /// appends) are ignored.
    pub fn open(path: &Path) -> Result<Db, BoltError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut head = vec![0u8; len.min(4096) as usize];
        file.read_exact_at(&mut head, 0)?;
        let valid_size = |m: Meta| {
            if (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&m.page_size) { Ok(m) } else { Err(BoltError::PageSize(m.page_size)) }
        };
        let meta0 = parse_meta(&head).and_then(valid_size);
        let page_size = match &meta0 {
            Ok(m) => u64::from(m.page_size),
            // bbolt then guesses the OS page size; meta page 1 tells which
            // guess is right.
            Err(_) => PAGE_SIZES
                .iter()
                .copied()
                .find(|ps| Self::read_meta(&file, len, *ps).is_ok_and(|m| u64::from(m.page_size) == *ps))
                .unwrap_or(4096),
        };
        let meta1 = Self::read_meta(&file, len, page_size)
            .and_then(valid_size)
            .and_then(|m| if u64::from(m.page_size) == page_size { Ok(m) } else { Err(BoltError::PageSize(m.page_size)) });
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            // bbolt reports meta page 0's error.
            (Err(e), Err(_)) => return Err(e),
        };
        let size = meta.pgid.checked_mul(page_size).ok_or_else(|| BoltError::Corrupt(format!("{} pages overflow", meta.pgid)))?;
        if size > len {
            return Err(BoltError::Truncated { size: len, pages: meta.pgid, page_size });
        }
        let db = Db { file, page_size, meta };
        db.check_id(meta.root)?;
        Ok(db)
    }

    fn read_meta(file: &File, len: u64, page_size: u64) -> Result<Meta, BoltError> {
        if len < page_size + (META_AT + META_LEN) as u64 {
            return Err(BoltError::Invalid);
        }
        let mut page = [0u8; META_AT + META_LEN];
        file.read_exact_at(&mut page, page_size)?;
        parse_meta(&page)
    }

    /// bbolt's tx.Size(): the pages in use times the page size.
    pub fn size(&self) -> u64 {
        // Cannot overflow: checked by open.
        self.meta.pgid.saturating_mul(self.page_size)
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The transaction id of the meta page read.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// Pages 0 and 1 are the meta pages, never part of a tree.
    fn check_id(&self, id: u64) -> Result<(), BoltError> {
        if id < 2 || id >= self.meta.pgid {
            return Err(BoltError::PageOutOfRange { id, pages: self.meta.pgid });
        }
        Ok(())
    }

    /// Reads page `id` with its overflow pages, taking them from `budget`.
    fn read_page(&self, id: u64, budget: &mut u64) -> Result<Vec<u8>, BoltError> {
        self.check_id(id)?;
        let offset = id * self.page_size;
        let mut header = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut header, offset)?;
        let own = le_u64(&header, 0).unwrap_or(u64::MAX);
        if own != id {
            return Err(corrupt(Loc::Page(id), format_args!("its header names page {own}")));
        }
        let overflow = u64::from(le_u32(&header, 12).unwrap_or(u32::MAX));
        let end = id.checked_add(overflow).and_then(|e| e.checked_add(1));
        if end.is_none_or(|e| e > self.meta.pgid) {
            return Err(corrupt(Loc::Page(id), format_args!("its {overflow} overflow pages run past the last page")));
        }
        // A tree's pages do not overlap, so one walk reads at most the
        // database's pages; more means a page is reached twice (a cycle, or
        // a subtree shared), and the walk could otherwise take exponential
        // time.
        *budget = budget
            .checked_sub(overflow + 1)
            .ok_or_else(|| corrupt(Loc::Page(id), "it is reached twice (the walk reads more pages than the database has)"))?;
        let span = (overflow + 1) * self.page_size;
        if span > MAX_SPAN {
            return Err(corrupt(Loc::Page(id), format_args!("it spans {span} bytes, more than any value (at most {MAX_SPAN})")));
        }
        let mut buf = vec![0u8; span as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Visits every element of a tree in key order, bucket entries included.
    fn walk(&self, root: Root<'_>, visit: &mut Visit<'_>) -> Result<bool, BoltError> {
        let mut w = Walker { db: self, budget: self.meta.pgid, last: None, visit };
        match root {
            Root::Page(id) => w.page(id, 0),
            Root::Inline(page) => w.leaf(page, Loc::Inline),
        }
    }

    /// The value of top-level bucket `name` (its header, and its page when
    /// inline); None if there is no such bucket.
    fn bucket_value(&self, name: &[u8]) -> Result<Option<Vec<u8>>, BoltError> {
        let mut found = None;
        self.walk(Root::Page(self.meta.root), &mut |flags, k, v| {
            if k == name && flags & BUCKET_LEAF != 0 {
                found = Some(v.to_vec());
            }
            // Keys are in order: past `name` it cannot come.
            Ok(k < name)
        })?;
        Ok(found)
    }

    /// The top-level bucket names, in byte order.
    pub fn buckets(&self) -> Result<Vec<Vec<u8>>, BoltError> {
        let mut names = Vec::new();
        self.walk(Root::Page(self.meta.root), &mut |flags, k, _| {
            if flags & BUCKET_LEAF != 0 {
                names.push(k.to_vec());
            }
            Ok(true)
        })?;
        Ok(names)
    }

    /// Visits the key/value pairs of top-level bucket `bucket` in key order
    /// until `f` returns false. Nested buckets are skipped (etcd has none).
    /// Returns whether the bucket exists.
    pub fn for_each(&self, bucket: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<bool, BoltError> {
        let Some(value) = self.bucket_value(bucket)? else { return Ok(false) };
        let root = bucket_root(bucket, &value)?;
        self.walk(root, &mut |flags, k, v| Ok(flags & BUCKET_LEAF != 0 || f(k, v)))?;
        Ok(true)
    }

    /// `etcdctl snapshot status` as 3.4 computes it: a CRC-32C over each
    /// top-level bucket's name and then its keys and values, in byte order;
    /// the main revision of the last key of bucket `key`; every entry
    /// counted. A nested bucket's entry counts with an empty value, as in
    /// bbolt's ForEach (etcd has none).
    pub fn status(&self) -> Result<EtcdStatus, BoltError> {
        let mut crc = Crc32c::new();
        let mut st = EtcdStatus { total_size: self.size(), ..Default::default() };
        self.walk(Root::Page(self.meta.root), &mut |flags, name, value| {
            if flags & BUCKET_LEAF == 0 {
                return Ok(true);
            }
            crc.update(name);
            let revisions = name == b"key";
            self.walk(bucket_root(name, value)?, &mut |flags, k, v| {
                crc.update(k);
                if flags & BUCKET_LEAF == 0 {
                    crc.update(v);
                }
                if revisions {
                    // etcd's bytesToRev: the main revision is the first 8 bytes, big-endian.
                    let main = k.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
                    let bad = || BoltError::Corrupt(format!("bucket \"key\" holds a key of {} bytes, not a revision", k.len()));
                    st.revision = main.ok_or_else(bad)? as i64;
                }
                st.total_key += 1;
                Ok(true)
            })?;
            Ok(true)
        })?;
        st.hash = crc.finish();
        Ok(st)
    }
}

/// One walk over a tree: counts the pages read (see `read_page`) and
/// remembers the last key (keys must ascend, which also stops a walk that
/// reaches a leaf twice).
struct Walker<'d, 'v, 'f> {
    db: &'d Db,
    budget: u64,
    last: Option<Vec<u8>>,
    visit: &'v mut Visit<'f>,
}

impl Walker<'_, '_, '_> {
    fn page(&mut self, id: u64, depth: usize) -> Result<bool, BoltError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(Loc::Page(id), format_args!("it lies deeper than {MAX_DEPTH} levels")));
        }
        let buf = self.db.read_page(id, &mut self.budget)?;
        let at = Loc::Page(id);
        match le_u16(&buf, 8) {
            Some(BRANCH_PAGE) => {
                for i in 0..usize::from(le_u16(&buf, 10).unwrap_or(0)) {
                    let e = element(&buf, i, at)?;
                    // The element's key (the child's first key) is not needed
                    // to visit in order, but must lie inside the page.
                    let (pos, ksize) = (le_u32(e, 0).unwrap_or(0), le_u32(e, 4).unwrap_or(0));
                    data(&buf, i, pos, ksize, at)?;
                    let child = le_u64(e, 8).unwrap_or(0);
                    if !self.page(child, depth + 1)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Some(LEAF_PAGE) => self.leaf(&buf, at),
            flags => Err(corrupt(at, format_args!("flags {:#x} where a branch or leaf page belongs", flags.unwrap_or(0)))),
        }
    }

    fn leaf(&mut self, page: &[u8], at: Loc) -> Result<bool, BoltError> {
        match le_u16(page, 8) {
            Some(LEAF_PAGE) => {}
            flags => return Err(corrupt(at, format_args!("flags {:#x} where a leaf page belongs", flags.unwrap_or(0)))),
        }
        for i in 0..usize::from(le_u16(page, 10).unwrap_or(0)) {
            let e = element(page, i, at)?;
            let flags = le_u32(e, 0).unwrap_or(0);
            let (pos, ksize, vsize) = (le_u32(e, 4).unwrap_or(0), le_u32(e, 8).unwrap_or(0), le_u32(e, 12).unwrap_or(0));
            let kv = data(page, i, pos, ksize.checked_add(vsize).ok_or_else(|| corrupt(at, "an element's size overflows"))?, at)?;
            let (k, v) = kv.split_at(ksize as usize);
            if let Some(last) = &self.last
                && k <= last.as_slice()
            {
                return Err(corrupt(at, format_args!("element {i}'s key is out of order")));
            }
            if !(self.visit)(flags, k, v)? {
                return Ok(false);
            }
            let last = self.last.get_or_insert_with(Vec::new);
            last.clear();
            last.extend_from_slice(k);
        }
        Ok(true)
    }
}

/// Element `i` of a page (16 bytes after the header each).
fn element(page: &[u8], i: usize, at: Loc) -> Result<&[u8], BoltError> {
    let start = PAGE_HEADER + i * ELEMENT;
    page.get(start..start + ELEMENT).ok_or_else(|| corrupt(at, format_args!("element {i} lies beyond the page")))
}

/// The `len` bytes element `i` points at: `pos` counts from the element.
fn data(page: &[u8], i: usize, pos: u32, len: u32, at: Loc) -> Result<&[u8], BoltError> {
    let start = (PAGE_HEADER + i * ELEMENT).checked_add(pos as usize);
    let range = start.and_then(|s| Some(s..s.checked_add(len as usize)?));
    range.and_then(|r| page.get(r)).ok_or_else(|| corrupt(at, format_args!("element {i}'s data lies beyond the page")))
}

/// bbolt images built by hand, for this module's tests, etcd_import's and
/// the fuzzers' seeds.
pub(crate) mod image {
    use super::{BRANCH_PAGE, BUCKET_LEAF, LEAF_PAGE, MAGIC, META_AT, META_SUMMED, VERSION, fnv1a64};

    /// Leaf element flag of a bucket value.
    pub(crate) const BUCKET: u32 = BUCKET_LEAF;

    /// A leaf element: flags (0, or BUCKET), key, value.
    pub(crate) type Elem<'a> = (u32, &'a [u8], &'a [u8]);

    /// Pages from page 2 on, laid out as they are added.
    pub(crate) struct Image {
        pub(crate) page_size: usize,
        data: Vec<u8>,
        next: u64,
    }

    impl Image {
        pub(crate) fn new(page_size: usize) -> Self {
            Self { page_size, data: Vec::new(), next: 2 }
        }

        /// Adds a page (with overflow pages when it needs them); its id.
        fn push(&mut self, mut page: Vec<u8>) -> u64 {
            let id = self.next;
            let span = page.len().div_ceil(self.page_size).max(1);
            page.resize(span * self.page_size, 0);
            page[0..8].copy_from_slice(&id.to_le_bytes());
            page[12..16].copy_from_slice(&((span - 1) as u32).to_le_bytes());
            self.data.extend_from_slice(&page);
            self.next += span as u64;
            id
        }

        pub(crate) fn leaf(&mut self, elems: &[Elem<'_>]) -> u64 {
            self.push(leaf_page(elems))
        }

        /// A branch page over `children`: (first key, page id).
        pub(crate) fn branch(&mut self, children: &[(&[u8], u64)]) -> u64 {
            let mut p = header(BRANCH_PAGE, children.len());
            let mut data = Vec::new();
            for (i, (key, child)) in children.iter().enumerate() {
                let elem = 16 + 16 * i;
                let pos = 16 + 16 * children.len() + data.len() - elem;
                p.extend_from_slice(&(pos as u32).to_le_bytes());
                p.extend_from_slice(&(key.len() as u32).to_le_bytes());
                p.extend_from_slice(&child.to_le_bytes());
                data.extend_from_slice(key);
            }
            p.extend_from_slice(&data);
            self.push(p)
        }

        /// The file: meta pages 0 and 1 ((root, txid) each), then the pages.
        pub(crate) fn finish_with(&self, meta0: (u64, u64), meta1: (u64, u64)) -> Vec<u8> {
            let mut f = meta_page(self.page_size, 0, meta0.0, self.next, meta0.1);
            f.extend_from_slice(&meta_page(self.page_size, 1, meta1.0, self.next, meta1.1));
            f.extend_from_slice(&self.data);
            f
        }

        /// The file as `snapshot save` writes one: both metas share the root,
        /// page 0 has the newer txid.
        pub(crate) fn finish(&self, root: u64) -> Vec<u8> {
            self.finish_with((root, 5), (root, 4))
        }
    }

    fn header(flags: u16, count: usize) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[8..10].copy_from_slice(&flags.to_le_bytes());
        p[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        p
    }

    /// A leaf page image (id 0, no padding: the form an inline bucket holds).
    pub(crate) fn leaf_page(elems: &[Elem<'_>]) -> Vec<u8> {
        let mut p = header(LEAF_PAGE, elems.len());
        let mut data = Vec::new();
        for (i, (flags, key, value)) in elems.iter().enumerate() {
            let elem = 16 + 16 * i;
            let pos = 16 + 16 * elems.len() + data.len() - elem;
            for n in [*flags, pos as u32, key.len() as u32, value.len() as u32] {
                p.extend_from_slice(&n.to_le_bytes());
            }
            data.extend_from_slice(key);
            data.extend_from_slice(value);
        }
        p.extend_from_slice(&data);
        p
    }

    /// A meta page, with its checksum; NoFreelistSync, as etcd writes them.
    pub(crate) fn meta_page(page_size: usize, id: u64, root: u64, pgid: u64, txid: u64) -> Vec<u8> {
        let mut p = header(0x04, 0);
        p[0..8].copy_from_slice(&id.to_le_bytes());
        let mut m = Vec::new();
        for n in [MAGIC, VERSION, page_size as u32, 0] {
            m.extend_from_slice(&n.to_le_bytes());
        }
        for n in [root, 0, u64::MAX, pgid, txid] {
            m.extend_from_slice(&n.to_le_bytes());
        }
        assert_eq!(m.len(), META_SUMMED);
        let sum = fnv1a64(&m);
        m.extend_from_slice(&sum.to_le_bytes());
        p.truncate(META_AT);
        p.extend_from_slice(&m);
        p.resize(page_size, 0);
        p
    }

    /// The value of a bucket whose tree starts at page `root`.
    pub(crate) fn bucket(root: u64) -> Vec<u8> {
        let mut v = root.to_le_bytes().to_vec();
        v.extend_from_slice(&0u64.to_le_bytes());
        v
    }

    /// The value of an inline bucket holding `elems`.
    pub(crate) fn inline_bucket(elems: &[Elem<'_>]) -> Vec<u8> {
        let mut v = bucket(0);
        v.extend_from_slice(&leaf_page(elems));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::image::{BUCKET, Image, inline_bucket};
    use super::*;

    const PS: usize = 4096;

    fn rev(main: u64, sub: u64) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&sub.to_be_bytes());
        k
    }

    struct Sample {
        file: Vec<u8>,
        /// The page of bucket "a"'s leaf.
        a_leaf: u64,
    }

    /// Bucket "a" on a page (a small value, a value on overflow pages, a
    /// nested inline bucket), "b" inline, "key" a branch over two leaves.
    fn sample(page_size: usize) -> Sample {
        let mut img = Image::new(page_size);
        let big = vec![7u8; 10_000];
        let nested = inline_bucket(&[(0, b"n", b"nv")]);
        let a_leaf = img.leaf(&[(0, b"k1", b"v1"), (0, b"k2", &big), (BUCKET, b"nested", &nested)]);
        let (r2, r3, r4) = (rev(2, 0), rev(3, 0), rev(4, 1));
        let left = img.leaf(&[(0, &r2, b"two"), (0, &r3, b"three")]);
        let right = img.leaf(&[(0, &r4, b"four")]);
        let key = img.branch(&[(&r2, left), (&r4, right)]);
        let b = inline_bucket(&[(0, b"x", b"1"), (0, b"y", b"")]);
        let root = img.leaf(&[(BUCKET, b"a", &image::bucket(a_leaf)), (BUCKET, b"b", &b), (BUCKET, b"key", &image::bucket(key))]);
        Sample { file: img.finish(root), a_leaf }
    }

    fn open(bytes: &[u8]) -> Result<Db, BoltError> {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), bytes).expect("write");
        // The open file outlives its name.
        Db::open(f.path())
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn entries(db: &Db, bucket: &[u8]) -> Result<Option<Pairs>, BoltError> {
        let mut out = Vec::new();
        let found = db.for_each(bucket, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(found.then_some(out))
    }

    fn set_u32(file: &mut [u8], at: usize, n: u32) {
        file[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }

    #[test]
    fn reads_buckets_overflow_values_inline_buckets_and_branches() {
        let s = sample(PS);
        assert!(looks_like_bbolt(&s.file));
        assert!(!looks_like_bbolt(b"raftkv-snapshot\n\0\0\0\x01"));
        let db = open(&s.file).expect("open");
        assert_eq!(db.page_size(), PS as u64);
        assert_eq!(db.txid(), 5);
        assert_eq!(db.size(), s.file.len() as u64);
        assert_eq!(db.buckets().expect("buckets"), vec![b"a".to_vec(), b"b".to_vec(), b"key".to_vec()]);
        let a = entries(&db, b"a").expect("a").expect("bucket a");
        assert_eq!(a, vec![(b"k1".to_vec(), b"v1".to_vec()), (b"k2".to_vec(), vec![7u8; 10_000])], "the nested bucket is skipped");
        let b = entries(&db, b"b").expect("b").expect("bucket b");
        assert_eq!(b, vec![(b"x".to_vec(), b"1".to_vec()), (b"y".to_vec(), Vec::new())]);
        let key = entries(&db, b"key").expect("key").expect("bucket key");
        assert_eq!(key.iter().map(|(_, v)| v.as_slice()).collect::<Vec<_>>(), vec![&b"two"[..], b"three", b"four"]);
        assert_eq!(entries(&db, b"nested").expect("lookup"), None, "only top-level buckets");
        assert_eq!(entries(&db, b"zzz").expect("lookup"), None);
        let mut seen = 0;
        assert!(db.for_each(b"key", &mut |_, _| {
            seen += 1;
            false
        })
        .expect("stop"));
        assert_eq!(seen, 1, "false stops the walk");
    }

    #[test]
    fn status_is_etcds() {
        let s = sample(PS);
        let st = open(&s.file).expect("open").status().expect("status");
        let mut crc = Crc32c::new();
        let big = vec![7u8; 10_000];
        let (r2, r3, r4) = (rev(2, 0), rev(3, 0), rev(4, 1));
        let parts: &[&[u8]] = &[
            b"a", b"k1", b"v1", b"k2", &big, b"nested", // a nested bucket: its key, no value
            b"b", b"x", b"1", b"y", b"",
            b"key", &r2, b"two", &r3, b"three", &r4, b"four",
        ];
        for p in parts {
            crc.update(p);
        }
        assert_eq!(st, EtcdStatus { hash: crc.finish(), revision: 4, total_key: 8, total_size: s.file.len() as u64 });
    }

    #[test]
    fn the_newer_valid_meta_is_read_and_a_damaged_page_0_still_gives_the_page_size() {
        let mut img = Image::new(8192);
        let old = img.leaf(&[(BUCKET, b"old", &inline_bucket(&[]))]);
        let new = img.leaf(&[(BUCKET, b"new", &inline_bucket(&[]))]);
        let names = |file: &[u8]| open(file).expect("open").buckets().expect("buckets");
        assert_eq!(names(&img.finish_with((new, 5), (old, 4))), vec![b"new".to_vec()]);
        assert_eq!(names(&img.finish_with((old, 4), (new, 5))), vec![b"new".to_vec()]);
        let mut file = img.finish_with((new, 5), (old, 4));
        file[META_AT + 16] ^= 1; // meta 0's root: its checksum no longer matches
        assert_eq!(names(&file), vec![b"old".to_vec()]);
        set_u32(&mut file, META_AT, 0); // and its magic
        assert_eq!(names(&file), vec![b"old".to_vec()], "the page size comes from meta page 1");
    }

    #[test]
    fn damaged_meta_pages_give_bbolts_errors() {
        let s = sample(PS);
        let both = |f: &dyn Fn(&mut Vec<u8>, usize)| {
            let mut file = s.file.clone();
            f(&mut file, 0);
            f(&mut file, PS);
            open(&file).map(|_| ())
        };
        assert!(matches!(both(&|f, at| set_u32(f, at + META_AT, 0xdead_beef)), Err(BoltError::Invalid)));
        assert!(matches!(both(&|f, at| set_u32(f, at + META_AT + 4, 3)), Err(BoltError::VersionMismatch)));
        assert!(matches!(both(&|f, at| f[at + META_AT + 40] ^= 1), Err(BoltError::Checksum)));
        assert_eq!(BoltError::Invalid.to_string(), "invalid database");
        assert!(matches!(open(b"not a database"), Err(BoltError::Invalid)));
        assert!(matches!(open(&[]), Err(BoltError::Invalid)));
        assert!(matches!(open(&s.file[..s.file.len() - PS]), Err(BoltError::Truncated { .. })));
        // Bytes past the pages in use (the SHA-256 of `snapshot save`) are ignored.
        let mut saved = s.file.clone();
        saved.extend_from_slice(&[9u8; 32]);
        assert_eq!(open(&saved).expect("open").size(), s.file.len() as u64);
    }

    #[test]
    fn damaged_pages_are_errors() {
        let s = sample(PS);
        let read_a = |file: &[u8]| open(file).and_then(|db| entries(&db, b"a"));

        // A bucket rooted beyond the file, or at a meta page.
        for bad_root in [999u64, 1] {
            let mut img = Image::new(PS);
            let root = img.leaf(&[(BUCKET, b"a", &image::bucket(bad_root))]);
            assert!(matches!(read_a(&img.finish(root)), Err(BoltError::PageOutOfRange { .. })), "root {bad_root}");
        }
        // An element pointing beyond its page.
        let mut file = s.file.clone();
        let elem = s.a_leaf as usize * PS + PAGE_HEADER;
        set_u32(&mut file, elem + 4, 0xffff_fff0);
        let err = read_a(&file).expect_err("pos beyond the page");
        assert!(err.to_string().contains("beyond the page"), "{err}");
        // A key size beyond the page.
        let mut file = s.file.clone();
        set_u32(&mut file, elem + 8, 1 << 20);
        assert!(matches!(read_a(&file), Err(BoltError::Corrupt(_))));
        // More elements than the page holds.
        let mut file = s.file.clone();
        file[s.a_leaf as usize * PS + 10..][..2].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(read_a(&file), Err(BoltError::Corrupt(_))));
        // Overflow pages past the end, a wrong page id, wrong flags.
        for (at, n) in [(12, 1000u32), (0, 77), (8, 0x10)] {
            let mut file = s.file.clone();
            set_u32(&mut file, s.a_leaf as usize * PS + at, n);
            assert!(matches!(read_a(&file), Err(BoltError::Corrupt(_))), "field at {at}");
        }
        // Meta pointing at a root beyond the file.
        let mut img = Image::new(PS);
        img.leaf(&[]);
        assert!(matches!(open(&img.finish(50)), Err(BoltError::PageOutOfRange { id: 50, .. })));
        // Keys out of order.
        let mut img = Image::new(PS);
        let root = img.leaf(&[(BUCKET, b"b", &inline_bucket(&[])), (BUCKET, b"a", &inline_bucket(&[]))]);
        assert!(matches!(open(&img.finish(root)).and_then(|db| db.buckets()), Err(BoltError::Corrupt(_))));
        // A truncated bucket value, and an inline page that is not a leaf.
        let mut img = Image::new(PS);
        let mut branchy = image::bucket(0);
        branchy.extend_from_slice(&[0u8; 8]);
        branchy.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        let root = img.leaf(&[(BUCKET, b"a", b"short"), (BUCKET, b"b", &branchy)]);
        let db = open(&img.finish(root)).expect("open");
        assert!(matches!(entries(&db, b"a"), Err(BoltError::Corrupt(_))));
        assert!(matches!(entries(&db, b"b"), Err(BoltError::Corrupt(_))));
    }

    #[test]
    fn cycles_end() {
        // A branch page whose child is itself, and two branches sharing a leaf.
        let mut img = Image::new(PS);
        let own_id = 2;
        let looped = img.branch(&[(b"a", own_id)]);
        assert_eq!(looped, own_id);
        let leaf = img.leaf(&[(0, b"k", b"v")]);
        let shared = img.branch(&[(b"a", leaf), (b"b", leaf)]);
        let root = img.leaf(&[(BUCKET, b"loop", &image::bucket(looped)), (BUCKET, b"shared", &image::bucket(shared))]);
        let db = open(&img.finish(root)).expect("open");
        let err = entries(&db, b"loop").expect_err("a cycle");
        assert!(err.to_string().contains("reached twice"), "{err}");
        assert!(matches!(entries(&db, b"shared"), Err(BoltError::Corrupt(_))));
        assert!(matches!(db.status(), Err(BoltError::Corrupt(_))));
    }

    #[test]
    fn no_damaged_byte_panics() {
        // Every byte of a small image, changed three ways: whatever happens
        // must be an Ok or an Err. The byte is changed in place (rewriting
        // the whole file each time is slow).
        let s = sample(512);
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), &s.file).expect("write");
        let out = std::fs::OpenOptions::new().write(true).open(f.path()).expect("open for writing");
        let mut outcomes = [0usize; 2];
        for (at, byte) in s.file.iter().enumerate() {
            for x in [0x01u8, 0x80, 0xff] {
                out.write_all_at(&[byte ^ x], at as u64).expect("damage");
                let r = Db::open(f.path()).and_then(|db| {
                    db.buckets()?;
                    entries(&db, b"a")?;
                    entries(&db, b"b")?;
                    db.status()
                });
                outcomes[usize::from(r.is_ok())] += 1;
            }
            out.write_all_at(&[*byte], at as u64).expect("repair");
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }
}
