//! Txn, as etcd applies it: every compare of the whole tree is evaluated
//! against the state before the transaction (the "path"), the chosen
//! branches are checked, then their operations run in one revision.

use etcd_client::proto::{
    PbCompare as Compare, PbResponseHeader, PbResponseOp as ResponseOp, PbTargetUnion as TargetUnion,
    PbTxnOpRequest as Request, PbTxnOpResponse as Response, PbTxnRequest as TxnRequest, PbTxnResponse as TxnResponse,
};

use super::{delete, put, range};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::mvcc::{RangeEnd, RangeOptions, WriteTxn};

// etcdserverpb.Compare enums.
const RESULT_EQUAL: i32 = 0;
const RESULT_GREATER: i32 = 1;
const RESULT_LESS: i32 = 2;
const RESULT_NOT_EQUAL: i32 = 3;
const TARGET_VERSION: i32 = 0;
const TARGET_CREATE: i32 = 1;
const TARGET_MOD: i32 = 2;
const TARGET_VALUE: i32 = 3;
const TARGET_LEASE: i32 = 4;

pub fn apply(txn: &mut WriteTxn<'_>, lessor: &Lessor, t: TxnRequest) -> Result<TxnResponse> {
    let mut path = Vec::new();
    compare_to_path(txn, &t, &mut path)?;
    check(txn, lessor, &t, &mut path.iter().copied())?;
    let mut resp = run(txn, lessor, t, &mut path.into_iter())?;
    resp.header = Some(PbResponseHeader { revision: txn.rev(), ..Default::default() });
    Ok(resp)
}

/// Whether a transaction writes anything (else it is served like a read).
pub fn is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(Request::RequestRange(_)) | None => true,
        Some(Request::RequestTxn(inner)) => is_read_only(inner),
        Some(_) => false,
    })
}

fn branch(t: &TxnRequest, succeeded: bool) -> &[etcd_client::proto::PbTxnRequestOp] {
    if succeeded { &t.success } else { &t.failure }
}

fn compare_to_path(txn: &WriteTxn<'_>, t: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &t.compare {
        if !compare(txn, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in branch(t, ok) {
        if let Some(Request::RequestTxn(inner)) = &op.request {
            compare_to_path(txn, inner, path)?;
        }
    }
    Ok(())
}

fn compare(txn: &WriteTxn<'_>, c: &Compare) -> Result<bool> {
    let rr = match txn.range(&c.key, &RangeEnd::from_request(&c.range_end), &RangeOptions::default()) {
        Ok(rr) => rr,
        Err(_) => return Ok(false),
    };
    if rr.kvs.is_empty() {
        // A missing key compares as zeroes, but never by value.
        return Ok(c.target != TARGET_VALUE && compare_kv(c, &Default::default()));
    }
    Ok(rr.kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &etcd_client::proto::PbKeyValue) -> bool {
    let ord = match c.target {
        TARGET_VALUE => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        target => {
            let want = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), TARGET_VERSION)
                | (Some(TargetUnion::CreateRevision(v)), TARGET_CREATE)
                | (Some(TargetUnion::ModRevision(v)), TARGET_MOD)
                | (Some(TargetUnion::Lease(v)), TARGET_LEASE) => *v,
                _ => 0,
            };
            let have = match target {
                TARGET_VERSION => kv.version,
                TARGET_CREATE => kv.create_revision,
                TARGET_MOD => kv.mod_revision,
                TARGET_LEASE => kv.lease,
                _ => return true,
            };
            have.cmp(&want)
        }
    };
    match c.result {
        RESULT_EQUAL => ord.is_eq(),
        RESULT_NOT_EQUAL => ord.is_ne(),
        RESULT_GREATER => ord.is_gt(),
        RESULT_LESS => ord.is_lt(),
        _ => true,
    }
}

/// Checks every operation on the chosen path before anything is written,
/// so a failing txn changes nothing.
fn check(txn: &WriteTxn<'_>, lessor: &Lessor, t: &TxnRequest, path: &mut impl Iterator<Item = bool>) -> Result<()> {
    let ok = path.next().unwrap_or(false);
    for op in branch(t, ok) {
        match &op.request {
            Some(Request::RequestPut(p)) => put::check(txn, lessor, p)?,
            Some(Request::RequestRange(r)) => {
                if r.revision > txn.rev() {
                    return Err(Error::FutureRev);
                }
                let opts = RangeOptions { rev: r.revision, count_only: true, ..Default::default() };
                txn.range(&r.key, &RangeEnd::Single, &opts)?;
            }
            Some(Request::RequestTxn(inner)) => check(txn, lessor, inner, path)?,
            Some(Request::RequestDeleteRange(_)) | None => {}
        }
    }
    Ok(())
}

fn run(txn: &mut WriteTxn<'_>, lessor: &Lessor, t: TxnRequest, path: &mut impl Iterator<Item = bool>) -> Result<TxnResponse> {
    let succeeded = path.next().unwrap_or(false);
    let ops = if succeeded { t.success } else { t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op.request {
            Some(Request::RequestRange(r)) => Some(Response::ResponseRange(range::range(txn, &r)?)),
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(put::apply(txn, lessor, p)?)),
            Some(Request::RequestDeleteRange(d)) => Some(Response::ResponseDeleteRange(delete::apply(txn, d)?)),
            Some(Request::RequestTxn(inner)) => {
                let mut r = run(txn, lessor, inner, path)?;
                r.header = Some(PbResponseHeader::default());
                Some(Response::ResponseTxn(r))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse { header: None, succeeded, responses })
}
