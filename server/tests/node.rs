//! The node end to end in one process: raft over real RocksDB, proposals
//! applied in order, state kept across a restart.

use clap::Parser;
use etcd_client::proto::{PbPutRequest, PbRangeRequest};
use raftkv::apply::Response;
use raftkv::apply::range::range;
use raftkv::apply::request::Op;
use raftkv::config::Config;
use raftkv::node::Node;

fn config(dir: &std::path::Path) -> Config {
    Config::parse_from(["raftkv", "--data-dir", dir.to_str().expect("utf-8 path")])
}

async fn put(node: &Node, k: &str, v: &str) -> i64 {
    let req = PbPutRequest { key: k.into(), value: v.into(), ..Default::default() };
    match node.propose(Op::Put(req)).await.expect("put") {
        Response::Put(r) => r.header.expect("header").revision,
        other => panic!("unexpected {other:?}"),
    }
}

fn version(node: &Node, k: &str) -> (i64, i64, i64) {
    let r = range(node.store.as_ref(), &PbRangeRequest { key: k.into(), ..Default::default() }).expect("range");
    let kv = &r.kvs[0];
    (kv.create_revision, kv.mod_revision, kv.version)
}

#[tokio::test]
async fn back_to_back_puts_count_versions_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir.path().join("d"));
    let (node, thread) = Node::start(&cfg).await.expect("start");
    node.wait_ready().await;
    put(&node, "a", "1").await;
    for i in 1..=4 {
        // Let raft tick between writes, as separate client processes do.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let rev = put(&node, "h", &format!("v{i}")).await;
        assert_eq!(version(&node, "h"), (3, rev, i));
    }
    node.stop();
    thread.join().expect("raft thread");
    drop(node);

    let (node, thread) = Node::start(&cfg).await.expect("restart");
    node.wait_ready().await;
    assert_eq!(version(&node, "h"), (3, 6, 4));
    assert_eq!(put(&node, "h", "v5").await, 7);
    assert_eq!(version(&node, "h"), (3, 7, 5));
    node.stop();
    thread.join().expect("raft thread");
}
