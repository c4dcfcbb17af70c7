//! DeleteRange, as etcd applies it: optional prev_kvs, then tombstones.

use etcd_client::proto::{PbDeleteRequest as DeleteRangeRequest, PbDeleteResponse as DeleteRangeResponse, PbResponseHeader};

use crate::error::Result;
use crate::mvcc::{RangeEnd, RangeOptions, WriteTxn};

pub fn apply(txn: &mut WriteTxn<'_>, d: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    let end = RangeEnd::from_request(&d.range_end);
    let prev_kvs = if d.prev_kv { txn.range(&d.key, &end, &RangeOptions::default())?.kvs } else { Vec::new() };
    let deleted = txn.delete_range(&d.key, &end);
    Ok(DeleteRangeResponse {
        header: Some(PbResponseHeader { revision: txn.rev(), ..Default::default() }),
        deleted,
        prev_kvs,
    })
}
