//! Range, as etcd's applier runs it: read, filter by revisions, sort, cut to
//! the limit. Serves plain reads and the reads inside a transaction.

use etcd_client::proto::{PbKeyValue as KeyValue, PbRangeRequest as RangeRequest, PbRangeResponse as RangeResponse, PbResponseHeader};

use crate::error::Result;
use crate::mvcc::{self, RangeEnd, RangeOptions, RangeResult, Store, WriteTxn};

/// Anything that can serve a range at a revision.
pub trait Reader {
    fn read(&self, key: &[u8], end: &RangeEnd, opts: &RangeOptions) -> mvcc::Result<RangeResult>;
}

impl Reader for Store {
    fn read(&self, key: &[u8], end: &RangeEnd, opts: &RangeOptions) -> mvcc::Result<RangeResult> {
        self.range(key, end, opts)
    }
}

impl Reader for WriteTxn<'_> {
    fn read(&self, key: &[u8], end: &RangeEnd, opts: &RangeOptions) -> mvcc::Result<RangeResult> {
        self.range(key, end, opts)
    }
}

// etcdserverpb.RangeRequest enums.
const SORT_NONE: i32 = 0;
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;

pub fn range(reader: &impl Reader, r: &RangeRequest) -> Result<RangeResponse> {
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Fetch everything when sorting or filtering; one extra for `more`.
    let limit = if r.sort_order != SORT_NONE || filtered || r.limit <= 0 { 0 } else { r.limit as usize + 1 };
    let opts = RangeOptions { limit, rev: r.revision, count_only: r.count_only };
    let rr = reader.read(&r.key, &RangeEnd::from_request(&r.range_end), &opts)?;
    let mut kvs = rr.kvs;
    if filtered {
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
    }
    let mut order = r.sort_order;
    if r.sort_target != TARGET_KEY && order == SORT_NONE {
        // Results come key-ordered already; other targets sort ascending.
        order = SORT_ASCEND;
    }
    if order == SORT_ASCEND || order == SORT_DESCEND {
        sort(&mut kvs, r.sort_target, order == SORT_DESCEND);
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: Some(PbResponseHeader { revision: rr.rev, ..Default::default() }),
        kvs,
        more,
        count: rr.count as i64,
    })
}

fn sort(kvs: &mut [KeyValue], target: i32, descend: bool) {
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        TARGET_VERSION => a.version.cmp(&b.version),
        TARGET_CREATE => a.create_revision.cmp(&b.create_revision),
        TARGET_MOD => a.mod_revision.cmp(&b.mod_revision),
        TARGET_VALUE => a.value.cmp(&b.value),
        _ => a.key.cmp(&b.key),
    };
    if descend {
        kvs.sort_by(|a, b| cmp(b, a));
    } else {
        kvs.sort_by(cmp);
    }
}
