//! The RocksDB engine: the only file in raftkv that names RocksDB.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    ReadOptions, WriteOptions,
};

use super::{Cf, CfSize, Engine, Result, SortedFile, StorageError, WriteBatch, WriteOp};

pub struct RocksEngine {
    db: DB,
    path: PathBuf,
}

fn cf_options(cache: &Cache, cf: Cf) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    // Small memtables: raftkv keeps its own index in memory, so RocksDB's
    // memtables only need to absorb writes between flushes.
    let buffer = match cf {
        Cf::Kv => 16 << 20,
        Cf::Raft => 16 << 20,
        Cf::Meta => 4 << 20,
    };
    opts.set_write_buffer_size(buffer);
    opts.set_max_write_buffer_number(2);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts
}

/// Options of the sorted files written for ingestion: the column
/// families' table format and compression (writing needs no block cache).
fn sst_options() -> &'static Options {
    static OPTS: std::sync::OnceLock<Options> = std::sync::OnceLock::new();
    OPTS.get_or_init(|| {
        let mut opts = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts
    })
}

/// An external SST file in the making. RocksDB refuses keys out of order.
struct SstFile {
    writer: rocksdb::SstFileWriter<'static>,
    path: PathBuf,
}

impl SortedFile for SstFile {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.writer.put(key, value).map_err(|e| sst_error(&self.path, e))
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.writer.finish().map_err(|e| sst_error(&self.path, e))?;
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| StorageError::Engine(format!("cannot sync {}: {e}", self.path.display())))
    }
}

fn sst_error(path: &Path, e: rocksdb::Error) -> StorageError {
    StorageError::Engine(format!("sorted file {}: {}", path.display(), e.into_string()))
}

/// Spare WAL files RocksDB keeps for reuse instead of deleting them.
const WAL_RECYCLE: usize = 2;

/// How long the WAL is made at open (see `prime_wal`): about what a WAL
/// takes before the raft column family's memtable fills and RocksDB moves
/// to the next one, so the recycled files that follow are as long.
const WAL_PRIME_BYTES: usize = 32 << 20;

/// Written into the meta column family, and deleted at once, to make
/// RocksDB move to a new WAL while priming it.
const WAL_PRIME_KEY: &[u8] = b"~wal-prime";

impl RocksEngine {
    /// Opens (creating if needed) a member's database under `path`, its
    /// WAL primed for synced appends (see `prime_wal`).
    pub fn open(path: &Path) -> Result<Self> {
        let engine = Self::open_with(path, WAL_RECYCLE)?;
        engine.prime_wal()?;
        Ok(engine)
    }

    /// Opens as `open` does, without priming the WAL afterwards: RocksDB's
    /// recovery of what a crash left, and nothing more (the fuzzing of a
    /// damaged WAL tail opens thousands of times).
    pub fn recover(path: &Path) -> Result<Self> {
        Self::open_with(path, WAL_RECYCLE)
    }

    fn open_with(path: &Path, recycle_wals: usize) -> Result<Self> {
        let cache = Cache::new_lru_cache(8 << 20);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_total_wal_size(64 << 20);
        db_opts.set_recycle_log_file_num(recycle_wals);
        let cfs = Cf::ALL.iter().map(|&cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(&cache, cf)));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| open_error(path, e))?;
        Ok(Self { db, path: path.to_path_buf() })
    }

    /// Every raft append is an fdatasync of RocksDB's WAL. Appending to a
    /// file makes that fdatasync also journal the file's new size; writing
    /// inside a file that is already long enough writes the data only,
    /// which is why etcd preallocates its WAL segments (measured on this
    /// project's disk: 0.20-0.23 ms against 0.14-0.16 ms per synced write,
    /// see docs/benchmarks.md). RocksDB cannot preallocate a WAL that way,
    /// but it can recycle WAL files: a recycled file is overwritten in
    /// place, from the start, with records that name their WAL, so what is
    /// left of its former contents is never replayed. The WAL RocksDB opens
    /// with is always a new file, so this makes the live WAL a recycled one
    /// of WAL_PRIME_BYTES: fill the new WAL with log data (records RocksDB
    /// replays as nothing), sync it, then make RocksDB move to a new WAL
    /// twice (a flush of a memtable holding one key): the first move
    /// retires the filled file to the recycle list, the second reuses it.
    /// Costs one sequential write of WAL_PRIME_BYTES per start (about
    /// 70 ms here).
    fn prime_wal(&self) -> Result<()> {
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..WAL_PRIME_BYTES / chunk.len() {
            let mut wb = rocksdb::WriteBatch::default();
            wb.put_log_data(&chunk);
            self.db.write(wb).map_err(engine_error)?;
        }
        self.db.flush_wal(true).map_err(engine_error)?;
        let meta = self.handle(Cf::Meta)?;
        // Two moves are enough when the first retirement is done by the
        // time the second move looks for a file to reuse; a few more cover
        // a retirement that lags, and stop once the live WAL is long.
        for _ in 0..4 {
            self.db.put_cf(meta, WAL_PRIME_KEY, b"").map_err(engine_error)?;
            self.db.delete_cf(meta, WAL_PRIME_KEY).map_err(engine_error)?;
            self.db.flush_cf(meta).map_err(engine_error)?;
            if self.live_wal_len()? >= WAL_PRIME_BYTES as u64 {
                return Ok(());
            }
        }
        tracing::warn!(path = %self.path.display(), "the WAL was not recycled at open: synced writes may be slower");
        Ok(())
    }

    /// The length of the newest WAL file (RocksDB names them NNNNNN.log).
    fn live_wal_len(&self) -> Result<u64> {
        let mut newest: Option<(String, u64)> = None;
        let entries = std::fs::read_dir(&self.path).map_err(|e| StorageError::Engine(format!("{}: {e}", self.path.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".log") {
                continue;
            }
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if newest.as_ref().is_none_or(|(n, _)| name > *n) {
                newest = Some((name, len));
            }
        }
        Ok(newest.map_or(0, |(_, len)| len))
    }

    fn handle(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StorageError::Corrupt { path: self.path.display().to_string(), detail: format!("column family {} missing", cf.name()) })
    }
}

fn open_error(path: &Path, e: rocksdb::Error) -> StorageError {
    let msg = e.into_string();
    let path = path.display().to_string();
    if msg.contains("lock") && (msg.contains("Resource temporarily unavailable") || msg.contains("No locks available")) {
        StorageError::Locked { path }
    } else if msg.contains("Corruption") || msg.contains("corrupt") || msg.contains("Invalid argument") {
        StorageError::Corrupt { path, detail: msg }
    } else {
        StorageError::Engine(msg)
    }
}

fn engine_error(e: rocksdb::Error) -> StorageError {
    StorageError::Engine(e.into_string())
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.handle(cf)?, key).map_err(engine_error)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                WriteOp::Put(cf, k, v) => wb.put_cf(self.handle(*cf)?, k, v),
                WriteOp::Delete(cf, k) => wb.delete_cf(self.handle(*cf)?, k),
                WriteOp::DeleteRange(cf, s, e) => wb.delete_range_cf(self.handle(*cf)?, s, e),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(wb, &opts).map_err(engine_error)
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut ro = ReadOptions::default();
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let iter = self.db.iterator_cf_opt(self.handle(cf)?, ro, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(engine_error)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last_in(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        ro.set_iterate_upper_bound(end.to_vec());
        let mut iter = self.db.iterator_cf_opt(self.handle(cf)?, ro, IteratorMode::End);
        match iter.next() {
            Some(item) => {
                let (k, v) = item.map_err(engine_error)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn compact_cf(&self, cf: Cf) -> Result<()> {
        // A plain manual compaction leaves files already at the bottom level
        // as they are, tombstones and all: force those to be rewritten too.
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
        opts.set_exclusive_manual_compaction(false);
        self.db.compact_range_cf_opt(self.handle(cf)?, None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<std::sync::Arc<dyn Engine>> {
        // Hard links to the live SST files after a flush: cheap, and
        // consistent across column families.
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(engine_error)?;
        cp.create_checkpoint(dir).map_err(engine_error)?;
        Ok(std::sync::Arc::new(RocksEngine::open_with(dir, 0)?))
    }

    fn sorted_file(&self, path: &Path, clear: &[(Vec<u8>, Vec<u8>)]) -> Result<Box<dyn SortedFile>> {
        let mut writer = rocksdb::SstFileWriter::create(sst_options());
        writer.open(path).map_err(|e| sst_error(path, e))?;
        for (start, end) in clear {
            // Deletes what the database holds, never the file's own keys.
            writer.delete_range(start, end).map_err(|e| sst_error(path, e))?;
        }
        Ok(Box::new(SstFile { writer, path: path.to_path_buf() }))
    }

    fn ingest(&self, cf: Cf, path: &Path) -> Result<()> {
        // RocksDB moves (hard-links, then unlinks) what it ingests: give it
        // a second link, so the file stays where it is.
        let link = path.with_extension("ingesting");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(path, &link)
            .map_err(|e| StorageError::Engine(format!("cannot link {} for ingestion: {e}", path.display())))?;
        let mut opts = rocksdb::IngestExternalFileOptions::default();
        opts.set_move_files(true);
        let done = self.db.ingest_external_file_cf_opts(self.handle(cf)?, &opts, vec![&link]);
        let _ = std::fs::remove_file(&link);
        done.map_err(|e| sst_error(path, e))
    }

    fn cf_size(&self, cf: Cf) -> CfSize {
        let prop = |name: &str| self.handle(cf).ok().and_then(|h| self.db.property_int_value_cf(h, name).ok().flatten()).unwrap_or(0);
        let memtables = prop("rocksdb.size-all-mem-tables");
        let total = prop("rocksdb.total-sst-files-size") + memtables;
        let live = prop("rocksdb.estimate-live-data-size") + memtables;
        CfSize { total, live: live.min(total) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_wal_is_primed_at_every_open_and_synced_writes_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        for round in 0u8..3 {
            let engine = RocksEngine::open(dir.path()).expect("open");
            let primed = engine.live_wal_len().expect("wal");
            assert!(primed >= WAL_PRIME_BYTES as u64, "round {round}: live WAL not primed");
            for seen in 0..round {
                assert_eq!(engine.get(Cf::Kv, &[seen]).expect("get"), Some(vec![seen; 300]), "round {round}: write {seen} lost");
            }
            assert_eq!(engine.get(Cf::Meta, WAL_PRIME_KEY).expect("get"), None);
            let mut batch = WriteBatch::default();
            batch.put(Cf::Kv, vec![round], vec![round; 300]);
            engine.write(batch, true).expect("write");
            // The write went inside the primed file: it did not grow.
            assert_eq!(engine.live_wal_len().expect("wal"), primed);
        }
    }

    /// Once WAL files are recycled, the live WAL is an old file overwritten
    /// from its start, its former records still behind the new ones. Writes
    /// enough to go through several recycled WALs (each memtable flush
    /// moves to the next), overwriting the same keys generation after
    /// generation, then reopens: every key must hold its last generation,
    /// which for the newest ones exists only in the live WAL.
    #[test]
    fn reopening_after_many_recycled_wals_loses_nothing() {
        const KEYS: u8 = 64;
        const GENERATIONS: u8 = 24;
        let value = |generation: u8, key: u8| {
            let mut v = vec![generation; 64 << 10];
            v[0] = key;
            v
        };
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let engine = RocksEngine::open(dir.path()).expect("open");
            for generation in 0..GENERATIONS {
                for key in 0..KEYS {
                    let mut batch = WriteBatch::default();
                    batch.put(Cf::Kv, vec![key], value(generation, key));
                    // Synced now and then, as raft appends are.
                    engine.write(batch, key % 16 == 0).expect("write");
                }
            }
        }
        // The premise: RocksDB reused WAL files other than the primed one.
        let info_log = std::fs::read_to_string(dir.path().join("LOG")).expect("RocksDB's info log");
        let reused = info_log.matches("from recycle list").count();
        assert!(reused >= 3, "only {reused} WAL files reused");
        let engine = RocksEngine::open(dir.path()).expect("reopen");
        for key in 0..KEYS {
            let got = engine.get(Cf::Kv, &[key]).expect("get").expect("key present");
            assert!(got == value(GENERATIONS - 1, key), "key {key}: generation {} after reopening", got[1]);
        }
    }
}
