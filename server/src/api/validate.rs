//! Request checks made before anything reaches raft, with etcd's answers
//! (v3rpc/key.go): empty keys, ignore_* conflicts, txn size and duplicate
//! keys across a transaction's branches.

use std::collections::HashSet;

use etcd_client::proto::{
    PbDeleteRequest as DeleteRangeRequest, PbPutRequest as PutRequest, PbRangeRequest as RangeRequest,
    PbTxnOpRequest as Request, PbTxnRequest as TxnRequest, PbTxnRequestOp as RequestOp,
};

use crate::error::{Error, Result};

pub fn range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if !(0..=2).contains(&r.sort_order) || !(0..=4).contains(&r.sort_target) {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn put(p: &PutRequest) -> Result<()> {
    if p.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn delete(d: &DeleteRangeRequest) -> Result<()> {
    if d.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn txn(t: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn(t, max_ops)?;
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<()> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => range(r)?,
            Some(Request::RequestPut(p)) => put(p)?,
            Some(Request::RequestDeleteRange(d)) => delete(d)?,
            Some(Request::RequestTxn(inner)) => check_txn(inner, max_ops)?,
            None => {}
        }
    }
    Ok(())
}

/// A deleted range: `end` None = the single key, Some(empty) = to the end.
struct Deleted {
    key: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Deleted {
    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.key.as_slice(),
            Some(end) if end.is_empty() || end.as_slice() == [0] => k >= self.key.as_slice(),
            Some(end) => k >= self.key.as_slice() && k < end.as_slice(),
        }
    }
}

/// etcd's checkIntervals: no key may be put twice, or put and deleted, on
/// one path through a transaction (then/else branches exclude each other).
fn check_intervals(reqs: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deleted>)> {
    let mut dels: Vec<Deleted> = reqs
        .iter()
        .filter_map(|r| match &r.request {
            Some(Request::RequestDeleteRange(d)) => Some(Deleted {
                key: d.key.clone(),
                end: if d.range_end.is_empty() { None } else { Some(d.range_end.clone()) },
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Deleted], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for r in reqs {
        let Some(Request::RequestTxn(t)) = &r.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for r in reqs {
        let Some(Request::RequestPut(p)) = &r.request else { continue };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp { request: Some(Request::RequestTxn(TxnRequest { success, failure, ..Default::default() })) }
    }

    fn check(ops: Vec<RequestOp>) -> Result<()> {
        txn(&TxnRequest { success: ops, ..Default::default() }, 128)
    }

    #[test]
    fn duplicate_keys_are_found_across_puts_deletes_and_nested_txns() {
        assert_eq!(check(vec![put_op("a"), put_op("a")]), Err(Error::DuplicateKey));
        assert_eq!(check(vec![del_op("a", "c"), put_op("b")]), Err(Error::DuplicateKey));
        assert_eq!(check(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]), Err(Error::DuplicateKey));
        assert_eq!(check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]), Ok(()));
        assert_eq!(check(vec![del_op("a", ""), del_op("a", "")]), Ok(()));
        assert_eq!(check(vec![put_op("a"), put_op("b")]), Ok(()));
    }

    #[test]
    fn too_many_operations_count_the_largest_list() {
        let ops: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(check(ops), Err(Error::TooManyOps));
        assert_eq!(check(vec![put_op("")]), Err(Error::EmptyKey));
    }
}
