//! Leases: which lease ids exist. Granting, keep-alive and expiry build on
//! this table; the KV path only asks whether a lease exists.

use std::collections::HashSet;

use parking_lot::RwLock;

#[derive(Default)]
pub struct Lessor {
    leases: RwLock<HashSet<i64>>,
}

impl Lessor {
    pub fn exists(&self, id: i64) -> bool {
        self.leases.read().contains(&id)
    }
}
