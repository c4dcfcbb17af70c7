//! LeaseGrant, LeaseRevoke and LeaseCheckpoint, as etcd applies them: a
//! grant records the lease; a revoke deletes its keys in one revision, then
//! forgets it; a checkpoint records remaining TTLs (no revision).

use etcd_client::proto::{
    PbLeaseGrantRequest as LeaseGrantRequest, PbLeaseGrantResponse as LeaseGrantResponse,
    PbLeaseRevokeRequest as LeaseRevokeRequest, PbLeaseRevokeResponse as LeaseRevokeResponse, PbResponseHeader,
};

use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::mvcc::{RangeEnd, WriteTxn};
use crate::storage::WriteBatch;
use super::request::LeaseCheckpointRequest;

pub fn grant(txn: &WriteTxn<'_>, lessor: &Lessor, g: LeaseGrantRequest, batch: &mut WriteBatch) -> Result<LeaseGrantResponse> {
    if !lessor.grant(g.id, g.ttl, batch) {
        return Err(Error::LeaseExists);
    }
    Ok(LeaseGrantResponse {
        header: Some(PbResponseHeader { revision: txn.rev(), ..Default::default() }),
        id: g.id,
        ttl: g.ttl,
        error: String::new(),
    })
}

pub fn revoke(txn: &mut WriteTxn<'_>, lessor: &Lessor, r: LeaseRevokeRequest, batch: &mut WriteBatch) -> Result<LeaseRevokeResponse> {
    let keys = lessor.keys_of(r.id).ok_or(Error::LeaseNotFound)?;
    for k in keys {
        txn.delete_range(&k, &RangeEnd::Single);
    }
    lessor.revoke(r.id, batch);
    Ok(LeaseRevokeResponse { header: Some(PbResponseHeader { revision: txn.rev(), ..Default::default() }) })
}

pub fn checkpoint(txn: &WriteTxn<'_>, lessor: &Lessor, c: LeaseCheckpointRequest, batch: &mut WriteBatch) -> Result<PbResponseHeader> {
    for cp in c.checkpoints {
        lessor.checkpoint(cp.id, cp.remaining_ttl, batch);
    }
    Ok(PbResponseHeader { revision: txn.rev(), ..Default::default() })
}
