//! The txn workload (etcd benchmark's `txn-put`): every request is one txn
//! with no compares whose success branch puts `--txn-ops` distinct keys.
//! As in etcd, txn number `seq` writes keys `seq * ops + j` modulo the key
//! space, so the key space must hold at least one txn's keys.

use etcd_client::{Client, Txn, TxnOp};

use super::put::check_key_space;
use super::{Workload, key_bytes, random_value};

#[derive(Debug, clap::Args)]
pub struct TxnArgs {
    /// Number of puts per txn.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
    /// Key size of a put, in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of a put, in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys; keys cycle through [0, key-space-size).
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
}

impl TxnArgs {
    pub(super) fn workload(&self) -> anyhow::Result<TxnPut> {
        check_key_space(self.key_size, self.key_space_size)?;
        if self.txn_ops == 0 || self.txn_ops as u64 > self.key_space_size {
            // etcd refuses a txn that puts the same key twice.
            anyhow::bail!("--txn-ops must be between 1 and --key-space-size");
        }
        Ok(TxnPut {
            ops: self.txn_ops,
            key_size: self.key_size,
            key_space_size: self.key_space_size,
            value: random_value(self.val_size),
        })
    }
}

pub(super) struct TxnPut {
    ops: usize,
    key_size: usize,
    key_space_size: u64,
    value: Vec<u8>,
}

impl TxnPut {
    fn txn(&self, seq: u64) -> Txn {
        let ops = self.ops as u64;
        let puts: Vec<TxnOp> = (0..ops)
            .map(|j| {
                let index = seq.wrapping_mul(ops).wrapping_add(j) % self.key_space_size;
                TxnOp::put(key_bytes(index, self.key_size), self.value.clone(), None)
            })
            .collect();
        Txn::new().and_then(puts)
    }
}

impl Workload for TxnPut {
    type Session = ();

    async fn open(&self, _client: &mut Client) -> Result<(), etcd_client::Error> {
        Ok(())
    }

    async fn request(&self, client: &mut Client, _: &mut (), seq: u64) -> Result<(), etcd_client::Error> {
        client.txn(self.txn(seq)).await.map(drop)
    }
}
