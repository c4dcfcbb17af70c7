//! MVCC against a plain model: every revision's whole key space kept as a
//! map. Random puts, range deletes, multi-op transactions and compactions;
//! ranges at random revisions must agree, before and after reopening the
//! store from its engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use raftkv::mvcc::{MvccError, RangeEnd, RangeOptions, Store};
use raftkv::storage::mem::MemEngine;
use raftkv::storage::{Engine, WriteBatch};

#[derive(Clone, Debug, PartialEq)]
struct Kv {
    value: Vec<u8>,
    create: i64,
    modified: i64,
    version: i64,
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8, Option<u8>),
    /// Several changes in one revision (distinct keys).
    Multi(Vec<(u8, Option<u8>)>),
    Compact(u8),
}

fn key(k: u8) -> Vec<u8> {
    vec![b'a' + k]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..8, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..8, proptest::option::of(0u8..9)).prop_map(|(k, e)| Op::Delete(k, e)),
        2 => proptest::collection::btree_map(0u8..8, proptest::option::of(any::<u8>()), 1..4)
            .prop_map(|m| Op::Multi(m.into_iter().collect())),
        1 => any::<u8>().prop_map(Op::Compact),
    ]
}

struct Model {
    /// revisions[r] = the key space at revision r (index 0 unused).
    revisions: Vec<BTreeMap<Vec<u8>, Kv>>,
    compacted: i64,
}

impl Model {
    fn new() -> Self {
        Self { revisions: vec![BTreeMap::new(), BTreeMap::new()], compacted: 0 }
    }
    fn current(&self) -> i64 {
        self.revisions.len() as i64 - 1
    }
    fn put(next: &mut BTreeMap<Vec<u8>, Kv>, rev: i64, k: Vec<u8>, v: Vec<u8>) {
        let (create, version) = match next.get(&k) {
            Some(old) => (old.create, old.version + 1),
            None => (rev, 1),
        };
        next.insert(k, Kv { value: v, create, modified: rev, version });
    }
}

fn in_range(k: &[u8], start: &[u8], end: &RangeEnd) -> bool {
    end.contains(start, k)
}

fn check_reads(store: &Store, model: &Model, probes: &[(u8, Option<u8>, u8)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(store.current_revision(), model.current());
    for &(k, e, r) in probes {
        let rev = (r as i64 % (model.current() + 1)).max(1);
        let start = key(k);
        let end = match e {
            None => RangeEnd::Single,
            Some(8) => RangeEnd::Infinity,
            Some(e) => RangeEnd::Until(key(e)),
        };
        let got = store.range(&start, &end, &RangeOptions { rev, ..Default::default() });
        if rev < model.compacted {
            prop_assert!(matches!(got, Err(MvccError::Compacted)), "read at {} below compaction {}", rev, model.compacted);
            continue;
        }
        let got = got.map_err(|e| TestCaseError::fail(format!("range failed: {e}")))?;
        let want: Vec<(&Vec<u8>, &Kv)> =
            model.revisions[rev as usize].iter().filter(|(kk, _)| in_range(kk, &start, &end)).collect();
        prop_assert_eq!(got.count, want.len());
        prop_assert_eq!(got.rev, model.current());
        for (g, (wk, w)) in got.kvs.iter().zip(&want) {
            prop_assert_eq!(&g.key, *wk);
            prop_assert_eq!(&g.value, &w.value);
            prop_assert_eq!((g.create_revision, g.mod_revision, g.version), (w.create, w.modified, w.version));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..60),
                                  probes in proptest::collection::vec((0u8..8, proptest::option::of(0u8..9), any::<u8>()), 20)) {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let store = Store::open(engine.clone()).expect("open");
        let mut model = Model::new();
        for op in ops {
            let mut next = model.revisions[model.current() as usize].clone();
            let rev = model.current() + 1;
            let mut txn = store.write();
            let mut changed = false;
            match op {
                Op::Put(k, v) => {
                    txn.put(&key(k), vec![v], 0);
                    Model::put(&mut next, rev, key(k), vec![v]);
                    changed = true;
                }
                Op::Delete(k, e) => {
                    let end = match e { None => RangeEnd::Single, Some(8) => RangeEnd::Infinity, Some(e) => RangeEnd::Until(key(e)) };
                    let n = txn.delete_range(&key(k), &end);
                    let before = next.len();
                    next.retain(|kk, _| !in_range(kk, &key(k), &end));
                    prop_assert_eq!(n as usize, before - next.len());
                    changed = before > next.len();
                }
                Op::Multi(changes) => {
                    for (k, v) in changes {
                        match v {
                            Some(v) => {
                                txn.put(&key(k), vec![v], 0);
                                Model::put(&mut next, rev, key(k), vec![v]);
                                changed = true;
                            }
                            None => {
                                // The model alone decides what the delete removes.
                                let existed = next.remove(&key(k)).is_some();
                                let n = txn.delete_range(&key(k), &RangeEnd::Single);
                                prop_assert_eq!(n, i64::from(existed), "delete of {:?}", key(k));
                                changed |= existed;
                            }
                        }
                    }
                }
                Op::Compact(r) => {
                    drop(txn);
                    let target = r as i64 % (model.current() + 1);
                    let res = store.compact(target, WriteBatch::default());
                    if target <= model.compacted {
                        prop_assert!(matches!(res, Err(MvccError::Compacted)));
                    } else {
                        prop_assert!(res.is_ok(), "compact {} failed: {:?}", target, res.err());
                        model.compacted = target;
                    }
                    continue;
                }
            }
            txn.commit(WriteBatch::default()).expect("commit");
            if changed {
                model.revisions.push(next);
            }
        }
        check_reads(&store, &model, &probes)?;
        let reopened = Store::open(engine).expect("reopen");
        prop_assert_eq!(reopened.compacted_revision(), model.compacted);
        check_reads(&reopened, &model, &probes)?;
    }
}
