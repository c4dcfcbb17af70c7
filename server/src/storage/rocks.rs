//! The RocksDB engine: the only file in raftkv that names RocksDB.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    ReadOptions, WriteOptions,
};

use super::{Cf, Engine, Result, StorageError, WriteBatch, WriteOp};

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

impl RocksEngine {
    /// Opens (creating if needed) the database under `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let cache = Cache::new_lru_cache(8 << 20);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_total_wal_size(64 << 20);
        let cfs = Cf::ALL.iter().map(|&cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(&cache, cf)));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| open_error(path, e))?;
        Ok(Self { db, path: path.to_path_buf() })
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
        self.db.compact_range_cf(self.handle(cf)?, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<std::sync::Arc<dyn Engine>> {
        // Hard links to the live SST files after a flush: cheap, and
        // consistent across column families.
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(engine_error)?;
        cp.create_checkpoint(dir).map_err(engine_error)?;
        Ok(std::sync::Arc::new(RocksEngine::open(dir)?))
    }

    fn size(&self) -> u64 {
        let mut total = 0;
        for cf in Cf::ALL {
            if let Ok(h) = self.handle(cf) {
                for prop in ["rocksdb.total-sst-files-size", "rocksdb.size-all-mem-tables"] {
                    if let Ok(Some(v)) = self.db.property_int_value_cf(h, prop) {
                        total += v;
                    }
                }
            }
        }
        total
    }
}
