//! Every option of Range, Put, DeleteRange, Txn and Compact, checked against
//! real etcd and raftkv side by side ([`for_both`]): each scenario records
//! what it observed (revisions, keys, values, counts, exact gRPC code and
//! message) and both servers must observe the same. Assertions inside the
//! scenarios pin the facts of the etcd v3 contract and hold on both.

use std::fmt::Debug;

use anyhow::{Context, bail, ensure};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, Error, GetOptions,
    LeaseGrantOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use raftkv_tests::describe::{self, outcome, revision};
use raftkv_tests::{for_both, for_both_with};

/// Fails unless `result` is the gRPC error `code` with exactly `message`;
/// returns the observation line.
fn expect_error<T: Debug>(
    result: Result<T, Error>,
    code: &str,
    message: &str,
) -> anyhow::Result<String> {
    match &result {
        Err(err) => match describe::grpc_status(err) {
            Some((got_code, got_message)) if got_code == code && got_message == message => {
                Ok(format!("err {code}: {message}"))
            }
            _ => bail!("expected {code} {message:?}, got {}", describe::error(err)),
        },
        Ok(value) => bail!("expected {code} {message:?}, got success: {value:?}"),
    }
}

async fn put_all(c: &mut Client, kvs: &[(&str, &str)]) -> anyhow::Result<()> {
    for (k, v) in kvs {
        c.put(*k, *v, None).await?;
    }
    Ok(())
}

async fn get(c: &mut Client, key: impl Into<Vec<u8>>, options: GetOptions) -> String {
    outcome(&c.get(key, Some(options)).await, describe::get)
}

async fn txn(c: &mut Client, t: Txn) -> String {
    outcome(&c.txn(t).await, describe::txn)
}

fn keys(resp: &etcd_client::GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| describe::bytes(kv.key()))
        .collect()
}

// ---------------------------------------------------------------- headers

#[tokio::test]
async fn a_fresh_store_is_at_revision_1_and_each_write_adds_one() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        let first = c.get("foo", None).await?;
        ensure!(
            revision(first.header()) == 1,
            "fresh store at revision {}",
            revision(first.header())
        );
        obs.push(describe::get(&first));

        let put = c.put("a", "1", None).await?;
        ensure!(
            revision(put.header()) == 2,
            "first write made revision {}",
            revision(put.header())
        );
        obs.push(describe::put(&put));
        obs.push(outcome(&c.put("b", "1", None).await, describe::put));
        // Deleting nothing writes nothing.
        obs.push(outcome(&c.delete("missing", None).await, describe::delete));
        obs.push(outcome(&c.delete("a", None).await, describe::delete));
        let two_puts =
            Txn::new().and_then([TxnOp::put("x", "1", None), TxnOp::put("y", "1", None)]);
        obs.push(txn(&mut c, two_puts).await);
        obs.push(txn(&mut c, Txn::new().and_then([TxnOp::get("x", None)])).await);
        let failing = Txn::new()
            .when([Compare::version("x", CompareOp::Equal, 9)])
            .and_then([TxnOp::put("z", "1", None)]);
        obs.push(txn(&mut c, failing).await);
        obs.push(outcome(&c.compact(3, None).await, |r| {
            format!("compacted rev={}", revision(r.header()))
        }));
        let last = c.get("x", None).await?;
        ensure!(
            revision(last.header()) == 5,
            "after 4 writes the store is at {}",
            revision(last.header())
        );
        obs.push(describe::get(&last));
        Ok(obs)
    })
    .await
}

// ---------------------------------------------------------------- range

#[tokio::test]
async fn range_end_selects_one_key_a_prefix_keys_from_and_all_keys() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        put_all(
            &mut c,
            &[
                ("a", "1"),
                ("a/1", "2"),
                ("a/2", "3"),
                ("b", "4"),
                ("b/1", "5"),
            ],
        )
        .await?;
        c.put(b"a\xff".to_vec(), "6", None).await?;
        c.put(b"\xff".to_vec(), "7", None).await?;
        c.put(b"\xff\xff".to_vec(), "8", None).await?;

        let prefix = c.get("a/", Some(GetOptions::new().with_prefix())).await?;
        ensure!(
            keys(&prefix) == ["a/1", "a/2"],
            "prefix a/ gave {:?}",
            keys(&prefix)
        );
        obs.push(describe::get(&prefix));
        obs.push(get(&mut c, "a", GetOptions::new()).await);
        obs.push(get(&mut c, "nope", GetOptions::new()).await);
        obs.push(get(&mut c, "a", GetOptions::new().with_prefix()).await);
        // Prefix ends: a\xff -> "b"; \xff -> "\0", i.e. every key from \xff.
        obs.push(get(&mut c, b"a\xff".to_vec(), GetOptions::new().with_prefix()).await);
        obs.push(get(&mut c, b"\xff".to_vec(), GetOptions::new().with_prefix()).await);
        obs.push(get(&mut c, "a/", GetOptions::new().with_range("a0")).await);
        obs.push(get(&mut c, "a/1", GetOptions::new().with_range("a/2")).await);
        obs.push(get(&mut c, "a/1", GetOptions::new().with_range("b")).await);
        // range_end <= key selects nothing.
        obs.push(get(&mut c, "b", GetOptions::new().with_range("a")).await);
        obs.push(get(&mut c, "b", GetOptions::new().with_range("b")).await);
        obs.push(get(&mut c, "b", GetOptions::new().with_from_key()).await);
        obs.push(get(&mut c, "\0", GetOptions::new().with_range("\0")).await);
        let all = c.get("", Some(GetOptions::new().with_all_keys())).await?;
        ensure!(all.kvs().len() == 8, "all keys gave {:?}", keys(&all));
        obs.push(describe::get(&all));
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn limit_sets_more_and_count_ignores_the_limit() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        put_all(
            &mut c,
            &[
                ("k1", "1"),
                ("k2", "2"),
                ("k3", "3"),
                ("k4", "4"),
                ("k5", "5"),
            ],
        )
        .await?;
        let limited = c
            .get("k", Some(GetOptions::new().with_prefix().with_limit(2)))
            .await?;
        ensure!(
            limited.kvs().len() == 2 && limited.more() && limited.count() == 5,
            "limit 2 of 5: {}",
            describe::get(&limited)
        );
        obs.push(describe::get(&limited));
        for limit in [0, 1, 4, 5, 6, -1] {
            obs.push(format!(
                "limit {limit}: {}",
                get(
                    &mut c,
                    "k",
                    GetOptions::new().with_prefix().with_limit(limit)
                )
                .await
            ));
        }
        // count at a past revision counts the keys of that revision.
        obs.push(
            get(
                &mut c,
                "k",
                GetOptions::new()
                    .with_prefix()
                    .with_limit(1)
                    .with_revision(3),
            )
            .await,
        );
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn revision_reads_history_and_rejects_compacted_and_future_revisions() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        c.put("k", "v1", None).await?; // 2
        c.put("k", "v2", None).await?; // 3
        c.delete("k", None).await?; // 4
        c.put("k", "v3", None).await?; // 5
        c.put("other", "x", None).await?; // 6
        for rev in [-1, 0, 1, 2, 3, 4, 5, 6] {
            obs.push(format!(
                "rev {rev}: {}",
                get(&mut c, "k", GetOptions::new().with_revision(rev)).await
            ));
        }
        obs.push(expect_error(
            c.get("k", Some(GetOptions::new().with_revision(7))).await,
            "OutOfRange",
            "etcdserver: mvcc: required revision is a future revision",
        )?);
        c.compact(3, None).await?;
        obs.push(expect_error(
            c.get("k", Some(GetOptions::new().with_revision(2))).await,
            "OutOfRange",
            "etcdserver: mvcc: required revision has been compacted",
        )?);
        obs.push(
            get(
                &mut c,
                "",
                GetOptions::new().with_all_keys().with_revision(1),
            )
            .await,
        );
        obs.push(get(&mut c, "k", GetOptions::new().with_revision(3)).await);
        obs.push(
            get(
                &mut c,
                "",
                GetOptions::new().with_all_keys().with_revision(4),
            )
            .await,
        );
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn sort_orders_by_every_target() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        // No ties on any target: KEY a<b<c, CREATE b<a<c, MOD a<c<b,
        // VERSION a<c<b, VALUE c<a<b.
        put_all(
            &mut c,
            &[
                ("b", "z"),
                ("a", "y"),
                ("c", "x"),
                ("c", "x"),
                ("b", "z"),
                ("b", "z"),
            ],
        )
        .await?;
        let by_value = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Value, SortOrder::Ascend),
                ),
            )
            .await?;
        ensure!(
            keys(&by_value) == ["c", "a", "b"],
            "VALUE ASCEND gave {:?}",
            keys(&by_value)
        );
        for target in [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ] {
            for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
                let resp = c
                    .get(
                        "",
                        Some(GetOptions::new().with_all_keys().with_sort(target, order)),
                    )
                    .await?;
                obs.push(format!("{target:?} {order:?}: {:?}", keys(&resp)));
            }
        }
        // Sorting happens before the limit cuts.
        obs.push(
            get(
                &mut c,
                "",
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Value, SortOrder::Descend)
                    .with_limit(2),
            )
            .await,
        );
        obs.push(
            get(
                &mut c,
                "",
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(1),
            )
            .await,
        );
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn keys_only_drops_values_and_count_only_drops_kvs() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        put_all(&mut c, &[("k1", "1"), ("k2", "2"), ("k3", "3")]).await?;
        let keys_only = c
            .get("k", Some(GetOptions::new().with_prefix().with_keys_only()))
            .await?;
        ensure!(
            keys_only.kvs().iter().all(|kv| kv.value().is_empty()),
            "keys_only returned values"
        );
        obs.push(describe::get(&keys_only));
        let count_only = c
            .get("k", Some(GetOptions::new().with_prefix().with_count_only()))
            .await?;
        ensure!(
            count_only.kvs().is_empty() && count_only.count() == 3,
            "count_only: {}",
            describe::get(&count_only)
        );
        obs.push(describe::get(&count_only));
        obs.push(
            get(
                &mut c,
                "k",
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_limit(1),
            )
            .await,
        );
        obs.push(
            get(
                &mut c,
                "k",
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(2),
            )
            .await,
        );
        obs.push(get(&mut c, "k2", GetOptions::new().with_count_only()).await);
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn mod_and_create_revision_filters() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        // k1 create 2 mod 5; k2 create 3 mod 3; k3 create 4 mod 6.
        put_all(
            &mut c,
            &[
                ("k1", "a"),
                ("k2", "a"),
                ("k3", "a"),
                ("k1", "b"),
                ("k3", "b"),
            ],
        )
        .await?;
        let filters: [(&str, GetOptions); 8] = [
            ("min_mod 5", GetOptions::new().with_min_mod_revision(5)),
            ("max_mod 4", GetOptions::new().with_max_mod_revision(4)),
            (
                "min_create 3",
                GetOptions::new().with_min_create_revision(3),
            ),
            (
                "max_create 3",
                GetOptions::new().with_max_create_revision(3),
            ),
            (
                "min_mod 4 max_mod 5",
                GetOptions::new()
                    .with_min_mod_revision(4)
                    .with_max_mod_revision(5),
            ),
            (
                "min_create 3 max_mod 4",
                GetOptions::new()
                    .with_min_create_revision(3)
                    .with_max_mod_revision(4),
            ),
            (
                "min_mod 3 limit 1",
                GetOptions::new().with_min_mod_revision(3).with_limit(1),
            ),
            (
                "min_mod 6 count_only",
                GetOptions::new().with_min_mod_revision(6).with_count_only(),
            ),
        ];
        for (name, options) in filters {
            obs.push(format!(
                "{name}: {}",
                get(&mut c, "k", options.with_prefix()).await
            ));
        }
        let newest = c
            .get(
                "k",
                Some(GetOptions::new().with_prefix().with_min_mod_revision(5)),
            )
            .await?;
        ensure!(
            keys(&newest) == ["k1", "k3"],
            "min_mod_revision 5 gave {:?}",
            keys(&newest)
        );
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn serializable_reads_see_committed_writes() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        c.put("k", "v", None).await?;
        let resp = c
            .get("k", Some(GetOptions::new().with_serializable()))
            .await?;
        ensure!(
            keys(&resp) == ["k"],
            "serializable read missed the write: {}",
            describe::get(&resp)
        );
        Ok(vec![describe::get(&resp)])
    })
    .await
}

// ---------------------------------------------------------------- put

#[tokio::test]
async fn put_prev_kv_and_ignore_value() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        let first = c
            .put("k", "v1", Some(PutOptions::new().with_prev_key()))
            .await?;
        ensure!(
            first.prev_key().is_none(),
            "a new key has a prev_kv: {}",
            describe::put(&first)
        );
        obs.push(describe::put(&first));
        obs.push(outcome(
            &c.put("k", "v2", Some(PutOptions::new().with_prev_key()))
                .await,
            describe::put,
        ));
        obs.push(outcome(&c.put("k", "v3", None).await, describe::put));
        // ignore_value keeps the value and still makes a new version.
        obs.push(outcome(
            &c.put(
                "k",
                "",
                Some(PutOptions::new().with_prev_key().with_ignore_value()),
            )
            .await,
            describe::put,
        ));
        let kept = c.get("k", None).await?;
        ensure!(
            kept.kvs().first().is_some_and(|kv| kv.value() == b"v3"
                && kv.version() == 4
                && kv.mod_revision() == 5),
            "after ignore_value: {}",
            describe::get(&kept)
        );
        obs.push(describe::get(&kept));

        obs.push(expect_error(
            c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
                .await,
            "InvalidArgument",
            "etcdserver: key not found",
        )?);
        obs.push(expect_error(
            c.put("missing", "v", Some(PutOptions::new().with_ignore_lease()))
                .await,
            "InvalidArgument",
            "etcdserver: key not found",
        )?);
        obs.push(expect_error(
            c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
                .await,
            "InvalidArgument",
            "etcdserver: value is provided",
        )?);
        obs.push(expect_error(
            c.put(
                "k",
                "v",
                Some(PutOptions::new().with_ignore_lease().with_lease(0x1234)),
            )
            .await,
            "InvalidArgument",
            "etcdserver: lease is provided",
        )?);
        obs.push(expect_error(
            c.put("k", "v", Some(PutOptions::new().with_lease(0x999)))
                .await,
            "NotFound",
            "etcdserver: requested lease not found",
        )?);
        // Failed puts wrote nothing.
        obs.push(get(&mut c, "", GetOptions::new().with_all_keys()).await);
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn put_ignore_lease_keeps_the_lease_and_a_plain_put_drops_it() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        const LEASE: i64 = 0x1234;
        c.lease_grant(300, Some(LeaseGrantOptions::new().with_id(LEASE)))
            .await?;
        obs.push(outcome(
            &c.put("k", "v1", Some(PutOptions::new().with_lease(LEASE)))
                .await,
            describe::put,
        ));
        obs.push(outcome(
            &c.put(
                "k",
                "v2",
                Some(PutOptions::new().with_prev_key().with_ignore_lease()),
            )
            .await,
            describe::put,
        ));
        let leased = c.get("k", None).await?;
        ensure!(
            leased
                .kvs()
                .first()
                .is_some_and(|kv| kv.lease() == LEASE && kv.value() == b"v2"),
            "after ignore_lease: {}",
            describe::get(&leased)
        );
        obs.push(describe::get(&leased));
        // A put without ignore_lease sets lease 0, even with ignore_value.
        obs.push(outcome(
            &c.put(
                "k",
                "",
                Some(PutOptions::new().with_prev_key().with_ignore_value()),
            )
            .await,
            describe::put,
        ));
        obs.push(outcome(
            &c.put(
                "k",
                "",
                Some(
                    PutOptions::new()
                        .with_prev_key()
                        .with_ignore_value()
                        .with_ignore_lease(),
                ),
            )
            .await,
            describe::put,
        ));
        obs.push(get(&mut c, "k", GetOptions::new()).await);
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn version_counts_every_put_even_when_clients_race() -> anyhow::Result<()> {
    for_both(|c| async move {
        const WRITERS: i64 = 8;
        const PUTS: i64 = 50;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..PUTS {
                    c.put("hot", format!("{w}/{i}"), None).await?;
                }
                Ok::<_, Error>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let mut c = c;
        let resp = c.get("hot", None).await?;
        let kv = resp.kvs().first().context("the key is missing")?;
        ensure!(
            kv.version() == WRITERS * PUTS
                && kv.create_revision() == 2
                && kv.mod_revision() == 1 + WRITERS * PUTS,
            "after {} puts: {}",
            WRITERS * PUTS,
            describe::kv(kv)
        );
        Ok(format!(
            "version={} create={} mod={}",
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ))
    })
    .await
}

#[tokio::test]
async fn empty_key_is_rejected_everywhere() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        const MESSAGE: &str = "etcdserver: key is not provided";
        obs.push(expect_error(
            c.put("", "v", None).await,
            "InvalidArgument",
            MESSAGE,
        )?);
        obs.push(expect_error(
            c.get("", None).await,
            "InvalidArgument",
            MESSAGE,
        )?);
        obs.push(expect_error(
            c.delete("", None).await,
            "InvalidArgument",
            MESSAGE,
        )?);
        obs.push(txn(&mut c, Txn::new().and_then([TxnOp::put("", "v", None)])).await);
        obs.push(txn(&mut c, Txn::new().and_then([TxnOp::get("", None)])).await);
        obs.push(txn(&mut c, Txn::new().or_else([TxnOp::delete("", None)])).await);
        obs.push(get(&mut c, "", GetOptions::new().with_all_keys()).await);
        Ok(obs)
    })
    .await
}

// ---------------------------------------------------------------- delete

#[tokio::test]
async fn delete_range_returns_counts_and_prev_kvs() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        put_all(
            &mut c,
            &[
                ("a", "1"),
                ("b/1", "2"),
                ("b/2", "3"),
                ("c", "4"),
                ("d", "5"),
                ("e", "6"),
            ],
        )
        .await?;
        let one = c
            .delete("a", Some(DeleteOptions::new().with_prev_key()))
            .await?;
        ensure!(
            one.deleted() == 1 && one.prev_kvs().len() == 1,
            "delete a: {}",
            describe::delete(&one)
        );
        obs.push(describe::delete(&one));
        obs.push(outcome(
            &c.delete("a", Some(DeleteOptions::new().with_prev_key()))
                .await,
            describe::delete,
        ));
        obs.push(outcome(
            &c.delete("b/", Some(DeleteOptions::new().with_prefix()))
                .await,
            describe::delete,
        ));
        obs.push(outcome(
            &c.delete(
                "c",
                Some(DeleteOptions::new().with_range("e").with_prev_key()),
            )
            .await,
            describe::delete,
        ));
        obs.push(outcome(
            &c.delete("zzz", Some(DeleteOptions::new().with_from_key()))
                .await,
            describe::delete,
        ));
        obs.push(outcome(
            &c.delete(
                "",
                Some(DeleteOptions::new().with_all_keys().with_prev_key()),
            )
            .await,
            describe::delete,
        ));
        // A deleted key starts a new generation: version 1, a new create revision.
        obs.push(outcome(&c.put("a", "again", None).await, describe::put));
        let again = c.get("a", None).await?;
        ensure!(
            again
                .kvs()
                .first()
                .is_some_and(|kv| kv.version() == 1 && kv.create_revision() == kv.mod_revision()),
            "re-created key: {}",
            describe::get(&again)
        );
        obs.push(describe::get(&again));
        Ok(obs)
    })
    .await
}

// ---------------------------------------------------------------- txn

/// Every target x result x operand below / equal / above, on a key and on a
/// missing key; the outcome of each compare is recorded.
async fn compare_table(c: &mut Client, key: &str, lease: i64) -> anyhow::Result<Vec<String>> {
    let mut obs = Vec::new();
    for op in [
        CompareOp::Equal,
        CompareOp::Greater,
        CompareOp::Less,
        CompareOp::NotEqual,
    ] {
        let mut compares = Vec::new();
        for operand in [1, 2, 3] {
            compares.push((
                format!("version {operand}"),
                Compare::version(key, op, operand),
            ));
            compares.push((
                format!("create {operand}"),
                Compare::create_revision(key, op, operand),
            ));
        }
        for operand in [0, 2, 3, 4] {
            compares.push((
                format!("mod {operand}"),
                Compare::mod_revision(key, op, operand),
            ));
        }
        for operand in ["", "a", "m", "z"] {
            compares.push((
                format!("value {operand:?}"),
                Compare::value(key, op, operand),
            ));
        }
        for operand in [0, lease - 1, lease, lease + 1] {
            compares.push((format!("lease {operand}"), Compare::lease(key, op, operand)));
        }
        for (name, compare) in compares {
            let resp = c.txn(Txn::new().when([compare])).await?;
            obs.push(format!("{key} {name} {op:?}: {}", resp.succeeded()));
        }
    }
    Ok(obs)
}

#[tokio::test]
async fn txn_compares_every_target_with_every_result() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        // k: create 2, mod 3, version 2, value "m", no lease.
        c.put("k", "m", None).await?;
        c.put("k", "m", None).await?;
        let mut obs = compare_table(&mut c, "k", 0x77).await?;
        obs.extend(compare_table(&mut c, "missing", 0x77).await?);
        // Spot checks of the contract on both servers.
        let equal_version = c
            .txn(Txn::new().when([Compare::version("k", CompareOp::Equal, 2)]))
            .await?;
        ensure!(equal_version.succeeded(), "version(k) == 2 failed");
        let missing_is_zero = c
            .txn(Txn::new().when([Compare::create_revision("missing", CompareOp::Equal, 0)]))
            .await?;
        ensure!(
            missing_is_zero.succeeded(),
            "a missing key does not compare as zero"
        );
        let missing_value = c
            .txn(Txn::new().when([Compare::value("missing", CompareOp::Equal, "")]))
            .await?;
        ensure!(
            !missing_value.succeeded(),
            "VALUE on a missing key compared true"
        );
        // Several compares must all hold.
        let all = Txn::new().when([
            Compare::version("k", CompareOp::Equal, 2),
            Compare::value("k", CompareOp::Equal, "x"),
        ]);
        obs.push(txn(&mut c, all).await);
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn txn_compares_the_lease_of_a_leased_key() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        const LEASE: i64 = 0x77;
        c.lease_grant(300, Some(LeaseGrantOptions::new().with_id(LEASE)))
            .await?;
        c.put("k", "m", None).await?;
        c.put("k", "m", Some(PutOptions::new().with_lease(LEASE)))
            .await?;
        let leased = c
            .txn(Txn::new().when([Compare::lease("k", CompareOp::Equal, LEASE)]))
            .await?;
        ensure!(leased.succeeded(), "lease(k) == {LEASE} failed");
        compare_table(&mut c, "k", LEASE).await
    })
    .await
}

#[tokio::test]
async fn txn_compares_over_a_range_hold_for_every_key() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        put_all(
            &mut c,
            &[("p/1", "a"), ("p/2", "b"), ("p/2", "b"), ("q", "c")],
        )
        .await?;
        let cases = [
            (
                "prefix version > 0",
                Compare::version("p/", CompareOp::Greater, 0).with_prefix(),
            ),
            (
                "prefix version = 1",
                Compare::version("p/", CompareOp::Equal, 1).with_prefix(),
            ),
            (
                "prefix version < 3",
                Compare::version("p/", CompareOp::Less, 3).with_prefix(),
            ),
            (
                "range [p/1,p/2) version = 1",
                Compare::version("p/1", CompareOp::Equal, 1).with_range("p/2"),
            ),
            (
                "range [p/1,q] value != c",
                Compare::value("p/1", CompareOp::NotEqual, "c").with_range("q\0"),
            ),
            (
                "range [p/1,q] value < c",
                Compare::value("p/1", CompareOp::Less, "c").with_range("q\0"),
            ),
            (
                "empty range version = 0",
                Compare::version("x", CompareOp::Equal, 0).with_range("y"),
            ),
            (
                "empty range value = ''",
                Compare::value("x", CompareOp::Equal, "").with_range("y"),
            ),
            (
                "empty prefix create = 0",
                Compare::create_revision("zz", CompareOp::Equal, 0).with_prefix(),
            ),
            (
                "from key mod > 1",
                Compare::mod_revision("p/", CompareOp::Greater, 1).with_range("\0"),
            ),
        ];
        for (name, compare) in cases {
            let resp = c.txn(Txn::new().when([compare])).await?;
            obs.push(format!("{name}: {}", resp.succeeded()));
        }
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn txn_takes_the_branch_of_its_compares_and_nests() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        c.put("a", "0", None).await?; // 2
        let inner = Txn::new()
            .when([Compare::value("a", CompareOp::Equal, "0")])
            .and_then([
                TxnOp::put("b", "inner-success", None),
                TxnOp::get("a", None),
            ])
            .or_else([TxnOp::put("b", "inner-failure", None)]);
        let outer = Txn::new()
            .when([Compare::value("a", CompareOp::Equal, "0")])
            .and_then([
                TxnOp::put("a", "1", Some(PutOptions::new().with_prev_key())),
                TxnOp::txn(inner),
                TxnOp::get("", Some(GetOptions::new().with_all_keys())),
            ])
            .or_else([TxnOp::put("c", "outer-failure", None)]);
        let resp = c.txn(outer).await?;
        ensure!(
            resp.succeeded() && revision(resp.header()) == 3,
            "nested txn: {}",
            describe::txn(&resp)
        );
        obs.push(describe::txn(&resp));

        // The same txn again takes the failure branch.
        let failing = Txn::new()
            .when([Compare::value("a", CompareOp::Equal, "0")])
            .and_then([TxnOp::put("c", "outer-success", None)])
            .or_else([
                TxnOp::delete("b", Some(DeleteOptions::new().with_prev_key())),
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::version("b", CompareOp::Greater, 0)])
                        .or_else([TxnOp::put("d", "nested-in-failure", None)]),
                ),
            ]);
        let resp = c.txn(failing).await?;
        ensure!(
            !resp.succeeded(),
            "value(a) == 0 still held: {}",
            describe::txn(&resp)
        );
        obs.push(describe::txn(&resp));
        obs.push(get(&mut c, "", GetOptions::new().with_all_keys()).await);
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn a_txn_makes_one_revision_however_many_keys_it_writes() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        c.put("old", "x", None).await?; // 2
        let writes = Txn::new().and_then([
            TxnOp::put("t1", "1", None),
            TxnOp::put("t2", "2", None),
            TxnOp::put("t3", "3", None),
            TxnOp::delete("old", None),
        ]);
        let resp = c.txn(writes).await?;
        ensure!(
            revision(resp.header()) == 3,
            "the txn made revision {}",
            revision(resp.header())
        );
        obs.push(describe::txn(&resp));
        let all = c.get("t", Some(GetOptions::new().with_prefix())).await?;
        ensure!(
            all.kvs().iter().all(|kv| kv.mod_revision() == 3),
            "mod revisions: {}",
            describe::get(&all)
        );
        obs.push(describe::get(&all));
        // Reads only, or deleting nothing, make no revision.
        obs.push(txn(&mut c, Txn::new().and_then([TxnOp::get("t1", None)])).await);
        obs.push(
            txn(
                &mut c,
                Txn::new().and_then([TxnOp::delete("nothing", None)]),
            )
            .await,
        );
        obs.push(txn(&mut c, Txn::new()).await);
        obs.push(txn(&mut c, Txn::new().and_then([TxnOp::put("t4", "4", None)])).await);
        Ok(obs)
    })
    .await
}

fn puts(n: usize, prefix: &str) -> Vec<TxnOp> {
    (0..n)
        .map(|i| TxnOp::put(format!("{prefix}{i}"), "v", None))
        .collect()
}

#[tokio::test]
async fn txn_of_more_than_128_ops_is_rejected() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        const MESSAGE: &str = "etcdserver: too many operations in txn request";
        obs.push(txn(&mut c, Txn::new().and_then(puts(128, "s"))).await);
        obs.push(expect_error(
            c.txn(Txn::new().and_then(puts(129, "s"))).await,
            "InvalidArgument",
            MESSAGE,
        )?);
        obs.push(expect_error(
            c.txn(Txn::new().or_else(puts(129, "f"))).await,
            "InvalidArgument",
            MESSAGE,
        )?);
        let compares: Vec<Compare> = (0..129)
            .map(|i| Compare::version(format!("c{i}"), CompareOp::Equal, 0))
            .collect();
        obs.push(txn(&mut c, Txn::new().when(compares)).await);
        obs.push(
            txn(
                &mut c,
                Txn::new().and_then(puts(100, "x")).or_else(puts(100, "y")),
            )
            .await,
        );
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn max_txn_ops_flag_sets_the_limit() -> anyhow::Result<()> {
    for_both_with(&["--max-txn-ops", "4"], |mut c| async move {
        let mut obs = Vec::new();
        obs.push(txn(&mut c, Txn::new().and_then(puts(4, "k"))).await);
        obs.push(expect_error(
            c.txn(Txn::new().and_then(puts(5, "k"))).await,
            "InvalidArgument",
            "etcdserver: too many operations in txn request",
        )?);
        Ok(obs)
    })
    .await
}

#[tokio::test]
async fn txn_writing_a_key_twice_is_rejected() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        const MESSAGE: &str = "etcdserver: duplicate key given in txn request";
        obs.push(expect_error(
            c.txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]))
                .await,
            "InvalidArgument",
            MESSAGE,
        )?);
        obs.push(expect_error(
            c.txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::delete("k", None)]))
                .await,
            "InvalidArgument",
            MESSAGE,
        )?);
        let cases: [(&str, Txn); 6] = [
            (
                "put inside a deleted range",
                Txn::new().and_then([
                    TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
                    TxnOp::put("k", "1", None),
                ]),
            ),
            (
                "put in nested txn and outer",
                Txn::new().and_then([
                    TxnOp::put("k", "1", None),
                    TxnOp::txn(Txn::new().and_then([TxnOp::put("k", "2", None)])),
                ]),
            ),
            (
                "same key in success and failure",
                Txn::new()
                    .and_then([TxnOp::put("k", "1", None)])
                    .or_else([TxnOp::put("k", "2", None)]),
            ),
            (
                "same key in nested success and failure",
                Txn::new().and_then([TxnOp::txn(
                    Txn::new()
                        .and_then([TxnOp::put("k", "1", None)])
                        .or_else([TxnOp::put("k", "2", None)]),
                )]),
            ),
            (
                "put and get of one key",
                Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::get("k", None)]),
            ),
            (
                "two deletes of one key",
                Txn::new().and_then([TxnOp::delete("k", None), TxnOp::delete("k", None)]),
            ),
        ];
        for (name, t) in cases {
            obs.push(format!("{name}: {}", txn(&mut c, t).await));
        }
        Ok(obs)
    })
    .await
}

// ---------------------------------------------------------------- compact

#[tokio::test]
async fn compact_removes_history_and_rejects_stale_or_future_revisions() -> anyhow::Result<()> {
    for_both(|mut c| async move {
        let mut obs = Vec::new();
        for v in ["1", "2", "3", "4", "5"] {
            c.put("k", v, None).await?; // 2..=6
        }
        let compacted = c
            .compact(4, Some(CompactionOptions::new().with_physical()))
            .await?;
        ensure!(
            revision(compacted.header()) == 6,
            "compaction changed the revision to {}",
            revision(compacted.header())
        );
        obs.push(format!("compact 4: rev={}", revision(compacted.header())));
        const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
        const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
        obs.push(expect_error(
            c.compact(4, None).await,
            "OutOfRange",
            COMPACTED,
        )?);
        obs.push(expect_error(
            c.compact(3, None).await,
            "OutOfRange",
            COMPACTED,
        )?);
        obs.push(expect_error(
            c.compact(7, None).await,
            "OutOfRange",
            FUTURE,
        )?);
        obs.push(expect_error(
            c.get("k", Some(GetOptions::new().with_revision(3))).await,
            "OutOfRange",
            COMPACTED,
        )?);
        obs.push(get(&mut c, "k", GetOptions::new().with_revision(4)).await);
        obs.push(get(&mut c, "k", GetOptions::new().with_revision(5)).await);
        // Compacting to the current revision keeps the latest values.
        obs.push(outcome(
            &c.compact(6, Some(CompactionOptions::new().with_physical()))
                .await,
            |r| format!("compact 6: rev={}", revision(r.header())),
        ));
        obs.push(get(&mut c, "k", GetOptions::new()).await);
        obs.push(expect_error(
            c.get("k", Some(GetOptions::new().with_revision(5))).await,
            "OutOfRange",
            COMPACTED,
        )?);
        Ok(obs)
    })
    .await
}
