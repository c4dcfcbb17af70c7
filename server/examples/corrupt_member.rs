//! A test tool, not an example to follow: alters a stopped member's data
//! behind raft's back, as a bad disk or a bug would, so that the corruption
//! checks have something to find. Rewrites the value of the newest revision
//! of KEY in the member's RocksDB.
//!
//! Usage: corrupt_member DATA_DIR KEY

use std::sync::Arc;

use etcd_client::proto::PbKeyValue as KeyValue;
use prost::Message;
use raftkv::storage::rocks::RocksEngine;
use raftkv::storage::{Cf, Engine, WriteBatch};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data_dir, key] = args.as_slice() else {
        anyhow::bail!("usage: corrupt_member DATA_DIR KEY");
    };
    let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(&std::path::Path::new(data_dir).join("member").join("db"))?);
    let mut newest: Option<(Vec<u8>, KeyValue)> = None;
    engine.scan(Cf::Kv, &[], None, &mut |k, v| {
        if let Ok(kv) = KeyValue::decode(v)
            && kv.key == key.as_bytes()
        {
            newest = Some((k.to_vec(), kv));
        }
        true
    })?;
    let Some((rev, mut kv)) = newest else {
        anyhow::bail!("no revision of {key:?} in {data_dir}");
    };
    kv.value = b"corrupted behind raft's back".to_vec();
    let mut b = WriteBatch::default();
    b.put(Cf::Kv, rev, kv.encode_to_vec());
    engine.write(b, true)?;
    println!("rewrote the value of {key:?}");
    Ok(())
}
