//! The put workload (etcd benchmark's `put`): every request writes one key
//! of `--key-size` bytes drawn from a space of `--key-space-size` keys, with
//! the same random value of `--val-size` bytes.

use anyhow::bail;
use etcd_client::Client;
use rand::Rng as _;

use super::{Workload, key_bytes, random_value};

#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// Key size of a put request, in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of a put request, in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys; keys are drawn from [0, key-space-size).
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Write keys 0, 1, 2, ... (modulo the key space) instead of random ones.
    #[arg(long)]
    pub sequential_keys: bool,
}

impl PutArgs {
    pub(super) fn workload(&self) -> anyhow::Result<Put> {
        check_key_space(self.key_size, self.key_space_size)?;
        Ok(Put {
            key_size: self.key_size,
            key_space_size: self.key_space_size,
            sequential: self.sequential_keys,
            value: random_value(self.val_size),
        })
    }
}

/// Refuses a key space larger than the distinct keys `key_size` bytes can name.
pub(super) fn check_key_space(key_size: usize, key_space_size: u64) -> anyhow::Result<()> {
    if key_size == 0 || key_space_size == 0 {
        bail!("--key-size and --key-space-size must be at least 1");
    }
    // Keys are decimal digits (see `key_bytes`); 10^20 exceeds any u64.
    let distinct = 10u128.saturating_pow(key_size.min(20) as u32);
    if u128::from(key_space_size) > distinct {
        bail!("--key-space-size {key_space_size} does not fit in keys of {key_size} bytes");
    }
    Ok(())
}

pub(super) struct Put {
    key_size: usize,
    key_space_size: u64,
    sequential: bool,
    value: Vec<u8>,
}

impl Put {
    fn key(&self, seq: u64) -> Vec<u8> {
        let index = if self.sequential {
            seq % self.key_space_size
        } else {
            rand::rng().random_range(0..self.key_space_size)
        };
        key_bytes(index, self.key_size)
    }
}

impl Workload for Put {
    type Session = ();

    async fn open(&self, _client: &mut Client) -> Result<(), etcd_client::Error> {
        Ok(())
    }

    async fn request(&self, client: &mut Client, _: &mut (), seq: u64) -> Result<(), etcd_client::Error> {
        client.put(self.key(seq), self.value.clone(), None).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_keys_wrap_around_the_key_space() {
        let put = Put { key_size: 8, key_space_size: 3, sequential: true, value: vec![] };
        assert_eq!(put.key(4), key_bytes(1, 8));
    }

    #[test]
    fn key_space_must_fit_the_key_size() {
        assert!(check_key_space(1, 10).is_ok());
        assert!(check_key_space(1, 11).is_err());
        assert!(check_key_space(8, 100_000_001).is_err());
        assert!(check_key_space(20, u64::MAX).is_ok());
    }
}
