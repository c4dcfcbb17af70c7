//! Put, as etcd applies it: prev_kv, ignore_value and ignore_lease read the
//! key first; a lease must exist.

use etcd_client::proto::{PbPutRequest as PutRequest, PbPutResponse as PutResponse, PbResponseHeader};

use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::mvcc::{RangeEnd, RangeOptions, WriteTxn};

/// What must hold before the put may run (also checked for a whole txn
/// before any of its writes).
pub fn check(txn: &WriteTxn<'_>, lessor: &Lessor, p: &PutRequest) -> Result<()> {
    if p.ignore_value || p.ignore_lease {
        let rr = txn.range(&p.key, &RangeEnd::Single, &RangeOptions::default())?;
        if rr.kvs.is_empty() {
            return Err(Error::KeyNotFound);
        }
    }
    if !p.ignore_lease && p.lease != 0 && !lessor.exists(p.lease) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

pub fn apply(txn: &mut WriteTxn<'_>, lessor: &Lessor, p: PutRequest) -> Result<PutResponse> {
    check(txn, lessor, &p)?;
    let prev = if p.prev_kv || p.ignore_value || p.ignore_lease {
        txn.range(&p.key, &RangeEnd::Single, &RangeOptions::default())?.kvs.into_iter().next()
    } else {
        None
    };
    let value = match (&prev, p.ignore_value) {
        (Some(kv), true) => kv.value.clone(),
        _ => p.value,
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(kv), true) => kv.lease,
        _ => p.lease,
    };
    let revision = txn.put(&p.key, value, lease);
    Ok(PutResponse {
        header: Some(PbResponseHeader { revision, ..Default::default() }),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}
