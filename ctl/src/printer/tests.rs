//! Each expected text below was printed by etcdctl 3.4.23 against etcd
//! 3.4.23 for the same response.

use etcd_client::proto::{
    PbDeleteResponse, PbKeyValue, PbLeaseStatus, PbMember, PbMemberListResponse, PbPutResponse,
    PbRangeResponse, PbResponseHeader, PbResponseOp, PbStatusResponse, PbTxnOpResponse,
    PbTxnResponse,
};

use crate::error::ExitCode;

use super::*;

const CLUSTER: u64 = 324952591200643719;
const MEMBER: u64 = 3319814642761637952;

fn header(revision: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader { cluster_id: CLUSTER, member_id: MEMBER, revision, raft_term: 2 })
}

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> PbKeyValue {
    PbKeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

fn text(f: impl FnOnce(&mut Vec<u8>) -> Result<(), CtlError>) -> String {
    let mut out = Vec::new();
    f(&mut out).expect("printing to a Vec cannot fail");
    String::from_utf8(out).expect("test output is UTF-8")
}

fn printer(format: Format) -> Printer {
    Printer::new(format, false)
}

fn get_foo() -> PbRangeResponse {
    PbRangeResponse { header: header(5), kvs: vec![kv("foo", "baz", 2, 5, 4)], count: 1, ..Default::default() }
}

#[test]
fn get_as_json() {
    let out = text(|w| printer(Format::Json).get(w, &get_foo()));
    assert_eq!(
        out,
        "{\"header\":{\"cluster_id\":324952591200643719,\"member_id\":3319814642761637952,\"revision\":5,\"raft_term\":2},\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":2,\"mod_revision\":5,\"version\":4,\"value\":\"YmF6\"}],\"count\":1}\n"
    );
}

#[test]
fn get_as_fields() {
    let out = text(|w| printer(Format::Fields).get(w, &get_foo()));
    assert_eq!(
        out,
        "\"ClusterID\" : 324952591200643719\n\"MemberID\" : 3319814642761637952\n\"Revision\" : 5\n\"RaftTerm\" : 2\n\"Key\" : \"foo\"\n\"CreateRevision\" : 2\n\"ModRevision\" : 5\n\"Version\" : 4\n\"Value\" : \"baz\"\n\"Lease\" : 0\n\"More\" : false\n\"Count\" : 1\n"
    );
}

#[test]
fn get_simple_with_hex_and_value_only() {
    let resp = PbRangeResponse { kvs: vec![kv("k1", "new v", 1, 1, 1)], ..Default::default() };
    let hex = Printer::new(Format::Simple, true);
    assert_eq!(text(|w| hex.get(w, &resp)), "\\x6b\\x31\n\\x6e\\x65\\x77\\x20\\x76\n");
    let value_only = Printer { value_only: true, ..printer(Format::Simple) };
    assert_eq!(text(|w| value_only.get(w, &resp)), "new v\n");
}

#[test]
fn kv_responses_do_not_print_as_table() {
    let err = printer(Format::Table).get(&mut Vec::new(), &get_foo());
    assert_eq!(err, Err(CtlError::bad_feature("table not supported as output format")));
}

#[test]
fn put_with_prev_kv() {
    let resp = PbPutResponse { header: header(5), prev_kv: Some(kv("foo", "baz", 2, 4, 3)) };
    assert_eq!(text(|w| printer(Format::Simple).put(w, &resp)), "OK\nfoo\nbaz\n");
    assert_eq!(
        text(|w| printer(Format::Json).put(w, &resp)),
        "{\"header\":{\"cluster_id\":324952591200643719,\"member_id\":3319814642761637952,\"revision\":5,\"raft_term\":2},\"prev_kv\":{\"key\":\"Zm9v\",\"create_revision\":2,\"mod_revision\":4,\"version\":3,\"value\":\"YmF6\"}}\n"
    );
}

#[test]
fn delete_with_prev_kvs() {
    let resp = PbDeleteResponse { header: header(11), deleted: 1, prev_kvs: vec![kv("foo", "1", 10, 10, 1)] };
    assert_eq!(text(|w| printer(Format::Simple).del(w, &resp)), "1\nfoo\n1\n");
    assert_eq!(
        text(|w| printer(Format::Json).del(w, &resp)),
        "{\"header\":{\"cluster_id\":324952591200643719,\"member_id\":3319814642761637952,\"revision\":11,\"raft_term\":2},\"deleted\":1,\"prev_kvs\":[{\"key\":\"Zm9v\",\"create_revision\":10,\"mod_revision\":10,\"version\":1,\"value\":\"MQ==\"}]}\n"
    );
}

fn txn_response() -> PbTxnResponse {
    let sub = |revision| Some(PbResponseHeader { revision, ..Default::default() });
    let op = |r| PbResponseOp { response: Some(r) };
    PbTxnResponse {
        header: header(15),
        succeeded: true,
        responses: vec![
            op(PbTxnOpResponse::ResponsePut(PbPutResponse { header: sub(15), prev_kv: None })),
            op(PbTxnOpResponse::ResponseRange(PbRangeResponse {
                header: sub(15),
                kvs: vec![kv("k1", "new v", 12, 15, 2), kv("k2", "v2", 13, 13, 1)],
                count: 2,
                ..Default::default()
            })),
            op(PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                header: sub(15),
                deleted: 1,
                prev_kvs: vec![],
            })),
        ],
    }
}

#[test]
fn txn_as_simple() {
    assert_eq!(
        text(|w| printer(Format::Simple).txn(w, &txn_response())),
        "SUCCESS\n\nOK\n\nk1\nnew v\nk2\nv2\n\n1\n"
    );
}

#[test]
fn txn_as_json_keeps_the_oneof_wrapper() {
    assert_eq!(
        text(|w| printer(Format::Json).txn(w, &txn_response())),
        "{\"header\":{\"cluster_id\":324952591200643719,\"member_id\":3319814642761637952,\"revision\":15,\"raft_term\":2},\"succeeded\":true,\"responses\":[{\"Response\":{\"ResponsePut\":{\"header\":{\"revision\":15}}}},{\"Response\":{\"ResponseRange\":{\"header\":{\"revision\":15},\"kvs\":[{\"key\":\"azE=\",\"create_revision\":12,\"mod_revision\":15,\"version\":2,\"value\":\"bmV3IHY=\"},{\"key\":\"azI=\",\"create_revision\":13,\"mod_revision\":13,\"version\":1,\"value\":\"djI=\"}],\"count\":2}}},{\"Response\":{\"ResponseDeleteRange\":{\"header\":{\"revision\":15},\"deleted\":1}}}]}\n"
    );
}

fn members() -> PbMemberListResponse {
    PbMemberListResponse {
        header: Some(PbResponseHeader { cluster_id: CLUSTER, member_id: MEMBER, revision: 0, raft_term: 2 }),
        members: vec![PbMember {
            id: MEMBER,
            name: "default".into(),
            peer_ur_ls: vec!["http://127.0.0.1:23800".into()],
            client_ur_ls: vec!["http://127.0.0.1:23790".into()],
            is_learner: false,
        }],
    }
}

#[test]
fn member_list_in_every_format() {
    assert_eq!(
        text(|w| printer(Format::Simple).member_list(w, &members())),
        "2e1259d415f2a040, started, default, http://127.0.0.1:23800, http://127.0.0.1:23790, false\n"
    );
    assert_eq!(
        text(|w| printer(Format::Json).member_list(w, &members())),
        "{\"header\":{\"cluster_id\":324952591200643719,\"member_id\":3319814642761637952,\"raft_term\":2},\"members\":[{\"ID\":3319814642761637952,\"name\":\"default\",\"peerURLs\":[\"http://127.0.0.1:23800\"],\"clientURLs\":[\"http://127.0.0.1:23790\"]}]}\n"
    );
    assert_eq!(
        text(|w| printer(Format::Table).member_list(w, &members())),
        "\
+------------------+---------+---------+------------------------+------------------------+------------+
|        ID        | STATUS  |  NAME   |       PEER ADDRS       |      CLIENT ADDRS      | IS LEARNER |
+------------------+---------+---------+------------------------+------------------------+------------+
| 2e1259d415f2a040 | started | default | http://127.0.0.1:23800 | http://127.0.0.1:23790 |      false |
+------------------+---------+---------+------------------------+------------------------+------------+
"
    );
}

fn statuses() -> Vec<EpStatus> {
    vec![EpStatus {
        endpoint: "127.0.0.1:23790".into(),
        status: PbStatusResponse {
            header: header(11),
            version: "3.4.23".into(),
            db_size: 32768,
            leader: MEMBER,
            raft_index: 20,
            raft_term: 2,
            raft_applied_index: 20,
            db_size_in_use: 16384,
            ..Default::default()
        },
    }]
}

#[test]
fn endpoint_status_in_every_format() {
    assert_eq!(
        text(|w| printer(Format::Simple).endpoint_status(w, &statuses())),
        "127.0.0.1:23790, 2e1259d415f2a040, 3.4.23, 33 kB, true, false, 2, 20, 20, \n"
    );
    assert_eq!(
        text(|w| printer(Format::Json).endpoint_status(w, &statuses())),
        "[{\"Endpoint\":\"127.0.0.1:23790\",\"Status\":{\"header\":{\"cluster_id\":324952591200643719,\"member_id\":3319814642761637952,\"revision\":11,\"raft_term\":2},\"version\":\"3.4.23\",\"dbSize\":32768,\"leader\":3319814642761637952,\"raftIndex\":20,\"raftTerm\":2,\"raftAppliedIndex\":20,\"dbSizeInUse\":16384}}]\n"
    );
    assert_eq!(
        text(|w| printer(Format::Table).endpoint_status(w, &statuses())),
        "\
+-----------------+------------------+---------+---------+-----------+------------+-----------+------------+--------------------+--------+
|    ENDPOINT     |        ID        | VERSION | DB SIZE | IS LEADER | IS LEARNER | RAFT TERM | RAFT INDEX | RAFT APPLIED INDEX | ERRORS |
+-----------------+------------------+---------+---------+-----------+------------+-----------+------------+--------------------+--------+
| 127.0.0.1:23790 | 2e1259d415f2a040 |  3.4.23 |   33 kB |      true |      false |         2 |         20 |                 20 |        |
+-----------------+------------------+---------+---------+-----------+------------+-----------+------------+--------------------+--------+
"
    );
    assert_eq!(
        text(|w| printer(Format::Fields).endpoint_status(w, &statuses())),
        "\"ClusterID\" : 324952591200643719\n\"MemberID\" : 3319814642761637952\n\"Revision\" : 11\n\"RaftTerm\" : 2\n\"Version\" : \"3.4.23\"\n\"DBSize\" : 32768\n\"Leader\" : 3319814642761637952\n\"IsLearner\" : false\n\"RaftIndex\" : 20\n\"RaftTerm\" : 2\n\"RaftAppliedIndex\" : 20\n\"Errors\" : []\n\"Endpoint\" : \"127.0.0.1:23790\"\n\n"
    );
}

#[test]
fn endpoint_health_formats() {
    let healthy = vec![EpHealth {
        endpoint: "127.0.0.1:23790".into(),
        health: true,
        took: "1.091487ms".into(),
        error: String::new(),
    }];
    assert_eq!(
        text(|w| printer(Format::Table).endpoint_health(w, &mut Vec::new(), &healthy)),
        "\
+-----------------+--------+------------+-------+
|    ENDPOINT     | HEALTH |    TOOK    | ERROR |
+-----------------+--------+------------+-------+
| 127.0.0.1:23790 |   true | 1.091487ms |       |
+-----------------+--------+------------+-------+
"
    );
    let unhealthy = vec![EpHealth {
        endpoint: "127.0.0.1:1".into(),
        health: false,
        took: "5.000674578s".into(),
        error: "context deadline exceeded".into(),
    }];
    assert_eq!(
        text(|w| printer(Format::Json).endpoint_health(w, &mut Vec::new(), &unhealthy)),
        "[{\"endpoint\":\"127.0.0.1:1\",\"health\":false,\"took\":\"5.000674578s\",\"error\":\"context deadline exceeded\"}]\n"
    );
    let mut stderr = Vec::new();
    let stdout = text(|w| printer(Format::Simple).endpoint_health(w, &mut stderr, &unhealthy));
    assert_eq!(stdout, "");
    assert_eq!(
        String::from_utf8_lossy(&stderr),
        "127.0.0.1:1 is unhealthy: failed to commit proposal: context deadline exceeded\n"
    );
}

const LEASE: i64 = 0x346aa1fdec46b405;

fn time_to_live(ttl: i64, granted_ttl: i64, keys: &[&str]) -> PbLeaseTimeToLiveResponse {
    PbLeaseTimeToLiveResponse {
        header: header(3),
        id: LEASE,
        ttl,
        granted_ttl,
        keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
    }
}

#[test]
fn lease_time_to_live_in_every_format() {
    let r = time_to_live(299, 300, &["lk1", "lk 2"]);
    assert_eq!(
        text(|w| printer(Format::Simple).lease_time_to_live(w, &r, true)),
        "lease 346aa1fdec46b405 granted with TTL(300s), remaining(299s), attached keys([lk1 lk 2])\n"
    );
    assert_eq!(
        text(|w| printer(Format::Json).lease_time_to_live(w, &time_to_live(299, 300, &[]), false)),
        format!("{{\"cluster_id\":{CLUSTER},\"member_id\":{MEMBER},\"revision\":3,\"raft_term\":2,\"id\":{LEASE},\"ttl\":299,\"granted-ttl\":300,\"keys\":null}}\n")
    );
    assert!(text(|w| printer(Format::Json).lease_time_to_live(w, &r, true)).ends_with(",\"keys\":[\"bGsx\",\"bGsgMg==\"]}\n"));
    assert!(text(|w| printer(Format::Fields).lease_time_to_live(w, &r, true)).ends_with("\"TTL\" : 299\n\"GrantedTTL\" : 300\n\"Key\" : \"lk1\"\n\"Key\" : \"lk 2\"\n"));
    let expired = PbLeaseTimeToLiveResponse { id: 0x1234, ..time_to_live(-1, 0, &[]) };
    assert_eq!(
        text(|w| printer(Format::Simple).lease_time_to_live(w, &expired, true)),
        "lease 0000000000001234 already expired\n"
    );
}

#[test]
fn lease_list_and_keep_alive_formats() {
    let list = PbLeaseLeasesResponse { header: header(3), leases: vec![PbLeaseStatus { id: LEASE }] };
    assert_eq!(text(|w| printer(Format::Simple).lease_leases(w, &list)), "found 1 leases\n346aa1fdec46b405\n");
    let empty = PbLeaseLeasesResponse { header: header(3), leases: vec![] };
    assert!(text(|w| printer(Format::Json).lease_leases(w, &empty)).ends_with(",\"raft_term\":2,\"leases\":[]}\n"));
    let ka = PbLeaseKeepAliveResponse { header: header(3), id: LEASE, ttl: 6 };
    assert_eq!(text(|w| printer(Format::Simple).lease_keep_alive(w, &ka)), "lease 346aa1fdec46b405 keepalived with TTL(6)\n");
    // The protobuf format prints only the embedded header.
    let mut pb = Vec::new();
    printer(Format::Protobuf).lease_keep_alive(&mut pb, &ka).expect("protobuf prints a header");
    assert_eq!(pb, header(3).unwrap_or_default().encode_to_vec());
    assert_eq!(text(|w| printer(Format::Json).lease_keep_alive_end(w, LEASE)), "");
}

#[test]
fn lease_revoke_cannot_be_marshalled_as_protobuf() {
    let r = PbLeaseRevokeResponse { header: header(3) };
    assert_eq!(text(|w| printer(Format::Simple).lease_revoke(w, LEASE, &r)), "lease 346aa1fdec46b405 revoked\n");
    let mut out = Vec::new();
    let err = printer(Format::Protobuf).lease_revoke(&mut out, LEASE, &r).expect_err("unsupported");
    assert_eq!(err.code, ExitCode::BadFeature);
    assert_eq!(
        err.message,
        format!("marshal unsupported for type clientv3.LeaseRevokeResponse ({{cluster_id:{CLUSTER} member_id:{MEMBER} revision:3 raft_term:2 }})")
    );
}

/// A three-member cluster (two of them shown) as etcd 3.4.23 answered a
/// `member add --learner` sent to its member m2.
const CLUSTER3: u64 = 17300438976491492131;
const M2: u64 = 185828541645115251;
const LEARNER: u64 = 9432302196691171410;

fn cluster_member(id: u64, name: &str, peer: &str, client: &str, is_learner: bool) -> PbMember {
    PbMember {
        id,
        name: name.into(),
        peer_ur_ls: vec![peer.into()],
        client_ur_ls: if client.is_empty() { vec![] } else { vec![client.into()] },
        is_learner,
    }
}

fn learner_added() -> PbMemberAddResponse {
    let learner = cluster_member(LEARNER, "", "http://127.0.0.1:24821", "", true);
    PbMemberAddResponse {
        header: Some(PbResponseHeader { cluster_id: CLUSTER3, member_id: M2, revision: 0, raft_term: 2 }),
        member: Some(learner.clone()),
        members: vec![
            cluster_member(M2, "m2", "http://127.0.0.1:23802", "http://127.0.0.1:23792", false),
            learner,
        ],
    }
}

#[test]
fn member_add_in_every_format() {
    let r = learner_added();
    assert_eq!(
        text(|w| printer(Format::Simple).member_add(w, &r)),
        "Member 82e644df97e9f852 added to cluster f017819664191323\n"
    );
    assert_eq!(
        text(|w| printer(Format::Json).member_add(w, &r)),
        "{\"header\":{\"cluster_id\":17300438976491492131,\"member_id\":185828541645115251,\"raft_term\":2},\"member\":{\"ID\":9432302196691171410,\"peerURLs\":[\"http://127.0.0.1:24821\"],\"isLearner\":true},\"members\":[{\"ID\":185828541645115251,\"name\":\"m2\",\"peerURLs\":[\"http://127.0.0.1:23802\"],\"clientURLs\":[\"http://127.0.0.1:23792\"]},{\"ID\":9432302196691171410,\"peerURLs\":[\"http://127.0.0.1:24821\"],\"isLearner\":true}]}\n"
    );
    for format in [Format::Fields, Format::Table] {
        let err = printer(format).member_add(&mut Vec::new(), &r).expect_err("unsupported");
        assert_eq!((err.code, err.message), (ExitCode::BadFeature, format!("{} not supported as output format", format.name())));
    }
    let conf = ["m2=http://127.0.0.1:23802".to_string(), "new=http://127.0.0.1:24821".to_string()];
    assert_eq!(
        text(|w| printer(Format::Simple).member_add_env(w, "new", &conf, "http://127.0.0.1:24821")),
        "\nETCD_NAME=\"new\"\nETCD_INITIAL_CLUSTER=\"m2=http://127.0.0.1:23802,new=http://127.0.0.1:24821\"\nETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://127.0.0.1:24821\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n"
    );
    assert_eq!(text(|w| printer(Format::Json).member_add_env(w, "new", &conf, "")), "");
}

#[test]
fn member_ids_pad_with_spaces_in_the_simple_format() {
    let r = PbMemberRemoveResponse { header: learner_added().header, members: vec![] };
    assert_eq!(
        text(|w| printer(Format::Simple).member_remove(w, M2, &r)),
        "Member  2943212f5e2cf73 removed from cluster f017819664191323\n"
    );
    let r = PbMemberUpdateResponse { header: r.header, members: learner_added().members };
    assert_eq!(
        text(|w| printer(Format::Simple).member_update(w, LEARNER, &r)),
        "Member 82e644df97e9f852 updated in cluster f017819664191323\n"
    );
    assert!(text(|w| printer(Format::Json).member_update(w, LEARNER, &r)).starts_with("{\"header\":{\"cluster_id\":17300438976491492131,\"member_id\":185828541645115251,\"raft_term\":2},\"members\":[{\"ID\":185828541645115251,"));
}

#[test]
fn member_promote_prints_only_in_the_simple_format() {
    let r = PbMemberPromoteResponse { header: learner_added().header, members: vec![] };
    assert_eq!(
        text(|w| printer(Format::Simple).member_promote(w, LEARNER, &r)),
        "Member 82e644df97e9f852 promoted in cluster f017819664191323\n"
    );
    for format in [Format::Json, Format::Fields, Format::Table, Format::Protobuf] {
        let err = printer(format).member_promote(&mut Vec::new(), LEARNER, &r).expect_err("panics");
        assert_eq!(err.code, ExitCode::Panic);
        assert_eq!(err.message, "runtime error: invalid memory address or nil pointer dereference");
    }
}

fn hashes() -> Vec<EpHashKv> {
    let header = PbResponseHeader { cluster_id: CLUSTER3, member_id: M2, revision: 2, raft_term: 12 };
    vec![EpHashKv {
        endpoint: "127.0.0.1:23792".into(),
        hash_kv: PbHashKvResponse { header: Some(header), hash: 3628877040, compact_revision: -1, hash_revision: 0 },
    }]
}

#[test]
fn endpoint_hashkv_in_every_format() {
    assert_eq!(text(|w| printer(Format::Simple).endpoint_hashkv(w, &hashes())), "127.0.0.1:23792, 3628877040\n");
    assert_eq!(
        text(|w| printer(Format::Json).endpoint_hashkv(w, &hashes())),
        "[{\"Endpoint\":\"127.0.0.1:23792\",\"HashKV\":{\"header\":{\"cluster_id\":17300438976491492131,\"member_id\":185828541645115251,\"revision\":2,\"raft_term\":12},\"hash\":3628877040,\"compact_revision\":-1}}]\n"
    );
    assert_eq!(text(|w| printer(Format::Json).endpoint_hashkv(w, &[])), "[]\n");
    assert_eq!(
        text(|w| printer(Format::Fields).endpoint_hashkv(w, &hashes())),
        "\"ClusterID\" : 17300438976491492131\n\"MemberID\" : 185828541645115251\n\"Revision\" : 2\n\"RaftTerm\" : 12\n\"Endpoint\" : \"127.0.0.1:23792\"\n\"Hash\" : 3628877040\n\n"
    );
    assert_eq!(
        text(|w| printer(Format::Table).endpoint_hashkv(w, &hashes())),
        "\
+-----------------+------------+
|    ENDPOINT     |    HASH    |
+-----------------+------------+
| 127.0.0.1:23792 | 3628877040 |
+-----------------+------------+
"
    );
}

#[test]
fn move_leader_formats() {
    // etcd 3.4 answers MoveLeader without a header.
    let r = PbMoveLeaderResponse { header: None };
    assert_eq!(
        text(|w| printer(Format::Simple).move_leader(w, 0x3760a4ec3b84f7fa, M2, &r)),
        "Leadership transferred from 3760a4ec3b84f7fa to 2943212f5e2cf73\n"
    );
    assert_eq!(text(|w| printer(Format::Json).move_leader(w, 1, 2, &r)), "{}\n");
    assert_eq!(text(|w| printer(Format::Protobuf).move_leader(w, 1, 2, &r)), "");
}
