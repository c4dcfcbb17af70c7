//! Leases: which exist, their TTLs, the keys attached to each, and when
//! each expires. Grants and revocations are applied through raft (the apply
//! layer persists them); expiry times live only in memory and are counted
//! from when this member became able to decide (a restart or a new leader
//! gives every lease its full TTL again, as etcd does without checkpoints).
//! It must not write keys itself: revoking a lease's keys is the applier's.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::storage::{Cf, Engine, StorageError, WriteBatch};

/// etcd's MaxLeaseTTL.
pub const MAX_TTL: i64 = 9_000_000_000;
const KEY_PREFIX: &[u8] = b"lease/";

#[derive(Debug, Clone)]
struct Lease {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
    expiry: Instant,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, Lease>,
    key_lease: HashMap<Vec<u8>, i64>,
}

pub struct Lessor {
    inner: RwLock<Inner>,
    /// Shortest TTL granted (1.5 election timeouts, rounded up to seconds).
    pub min_ttl: i64,
}

fn lease_key(id: i64) -> Vec<u8> {
    let mut k = KEY_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// A lease as TimeToLive shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub ttl: i64,
    pub remaining: i64,
    pub keys: Vec<Vec<u8>>,
}

impl Lessor {
    pub fn new(min_ttl: i64) -> Self {
        Self { inner: RwLock::default(), min_ttl }
    }

    /// Loads the persisted leases; `attached` gives (key, lease) of live keys.
    pub fn load(&self, engine: &dyn Engine, attached: impl IntoIterator<Item = (Vec<u8>, i64)>) -> Result<(), StorageError> {
        let mut inner = self.inner.write();
        *inner = Inner::default();
        let now = Instant::now();
        let mut end = KEY_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        engine.scan(Cf::Meta, KEY_PREFIX, Some(&end), &mut |k, v| {
            if let (Ok(id), Ok(ttl)) = (k[KEY_PREFIX.len()..].try_into().map(i64::from_be_bytes), v.try_into().map(i64::from_be_bytes)) {
                inner.leases.insert(id, Lease { ttl, keys: BTreeSet::new(), expiry: now + secs(ttl) });
            }
            true
        })?;
        for (key, id) in attached {
            if let Some(l) = inner.leases.get_mut(&id) {
                l.keys.insert(key.clone());
                inner.key_lease.insert(key, id);
            }
        }
        Ok(())
    }

    pub fn exists(&self, id: i64) -> bool {
        self.inner.read().leases.contains_key(&id)
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.inner.read().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Records a grant (applied through raft); false if the id exists.
    pub fn grant(&self, id: i64, ttl: i64, batch: &mut WriteBatch) -> bool {
        let mut inner = self.inner.write();
        if inner.leases.contains_key(&id) {
            return false;
        }
        batch.put(Cf::Meta, lease_key(id), ttl.to_be_bytes().to_vec());
        inner.leases.insert(id, Lease { ttl, keys: BTreeSet::new(), expiry: Instant::now() + secs(ttl) });
        true
    }

    /// The keys a revocation must delete, or None for an unknown lease.
    pub fn keys_of(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.inner.read().leases.get(&id).map(|l| l.keys.iter().cloned().collect())
    }

    /// Forgets a revoked lease (its keys are already deleted).
    pub fn revoke(&self, id: i64, batch: &mut WriteBatch) {
        let mut inner = self.inner.write();
        if let Some(l) = inner.leases.remove(&id) {
            for k in l.keys {
                inner.key_lease.remove(&k);
            }
        }
        batch.delete(Cf::Meta, lease_key(id));
    }

    /// Keeps the key -> lease map in step with a write to `key`.
    pub fn attach(&self, key: &[u8], lease: i64) {
        let mut inner = self.inner.write();
        if let Some(old) = inner.key_lease.remove(key) {
            if let Some(l) = inner.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
        if lease != 0 {
            if let Some(l) = inner.leases.get_mut(&lease) {
                l.keys.insert(key.to_vec());
                inner.key_lease.insert(key.to_vec(), lease);
            }
        }
    }

    /// Renews a lease for its full TTL; returns the TTL, None if unknown.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut inner = self.inner.write();
        let l = inner.leases.get_mut(&id)?;
        l.expiry = Instant::now() + secs(l.ttl);
        Some(l.ttl)
    }

    pub fn info(&self, id: i64) -> Option<LeaseInfo> {
        let inner = self.inner.read();
        let l = inner.leases.get(&id)?;
        let left = l.expiry.saturating_duration_since(Instant::now());
        // etcd rounds the remaining time up to whole seconds.
        let remaining = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
        Some(LeaseInfo { ttl: l.ttl, remaining, keys: l.keys.iter().cloned().collect() })
    }

    /// Leases past their expiry.
    pub fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.inner.read().leases.iter().filter(|(_, l)| l.expiry <= now).map(|(id, _)| *id).collect()
    }

    /// Gives every lease its full TTL again (this member starts deciding).
    pub fn promote(&self) {
        let now = Instant::now();
        for l in self.inner.write().leases.values_mut() {
            l.expiry = now + secs(l.ttl);
        }
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;

    #[test]
    fn grants_persist_and_keys_follow_their_latest_lease() {
        let engine = MemEngine::new();
        let l = Lessor::new(2);
        let mut b = WriteBatch::default();
        assert!(l.grant(7, 60, &mut b));
        assert!(!l.grant(7, 60, &mut b), "an existing id is refused");
        assert!(l.grant(8, 60, &mut b));
        engine.write(b, true).expect("write");
        l.attach(b"k", 7);
        l.attach(b"k", 8);
        assert_eq!(l.keys_of(7), Some(vec![]));
        assert_eq!(l.keys_of(8), Some(vec![b"k".to_vec()]));
        l.attach(b"k", 0);
        assert_eq!(l.keys_of(8), Some(vec![]));

        let reloaded = Lessor::new(2);
        reloaded.load(&engine, [(b"j".to_vec(), 7)]).expect("load");
        assert_eq!(reloaded.ids(), vec![7, 8]);
        assert_eq!(reloaded.info(7).map(|i| (i.ttl, i.keys)), Some((60, vec![b"j".to_vec()])));
        assert!(reloaded.expired().is_empty());
    }
}
