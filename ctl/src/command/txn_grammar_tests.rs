//! Expected errors are etcdctl 3.4.23's for the same lines.

use etcd_client::Txn;
use etcd_client::proto::{PbTxnOpRequest, PbTxnRequest};

use super::*;

fn compare(line: &str) -> etcd_client::proto::PbCompare {
    let cmp = parse_compare(line).expect("valid compare");
    let req: PbTxnRequest = Txn::new().when(vec![cmp]).into();
    req.compare.into_iter().next().expect("one compare")
}

fn request(line: &str) -> PbTxnOpRequest {
    let op = parse_request(line).expect("valid request");
    let req: PbTxnRequest = Txn::new().and_then(vec![op]).into();
    req.success.into_iter().next().and_then(|op| op.request).expect("one request")
}

fn message(r: Result<impl std::fmt::Debug, CtlError>) -> (ExitCode, String) {
    let e = r.expect_err("should be rejected");
    (e.code, e.message)
}

#[test]
fn argify_splits_quotes_as_etcdctl() {
    assert_eq!(argify(r#"put x "a\"b\x41""#).ok(), Some(vec![b"put".to_vec(), b"x".to_vec(), b"a\"bA".to_vec()]));
    // An unclosed quote is skipped, the word after it kept.
    assert_eq!(argify(r#"put x "a"#).ok(), Some(vec![b"put".to_vec(), b"x".to_vec(), b"a".to_vec()]));
    // etcdctl cuts a single-quoted word at the number of words.
    assert_eq!(
        argify(r#"put "a b" 'c d'"#).ok(),
        Some(vec![b"put".to_vec(), b"a b".to_vec(), b"c".to_vec()])
    );
}

#[test]
fn compares_of_every_target() {
    let c = compare(r#"mod("k1") > "0""#);
    assert_eq!((c.key, c.target, c.result), (b"k1".to_vec(), 2, 1));
    let c = compare(r#"ver("k") = "3""#);
    assert_eq!((c.target, c.result), (0, 0));
    let c = compare(r#"c("k") < "3""#);
    assert_eq!((c.target, c.result), (1, 2));
    let c = compare(r#"value("k") != "v""#);
    assert_eq!((c.target, c.result), (3, 3));
    let c = compare(r#"lease("k") = "ff""#);
    assert_eq!(c.target, 4);
}

#[test]
fn compare_errors_match_etcdctl() {
    let invalid = ExitCode::InvalidInput;
    assert_eq!(message(parse_compare("bad")), (invalid, "malformed comparison: bad".into()));
    assert_eq!(
        message(parse_compare(r#"mod("k1") = "x""#)),
        (invalid, r#"invalid txn compare request: mod("k1") = "x""#.into())
    );
    assert_eq!(
        message(parse_compare(r#"foo("k1") = "x""#)),
        (invalid, r#"malformed comparison: foo("k1") = "x" (unknown target foo)"#.into())
    );
    assert_eq!(
        message(parse_compare(r#"mod("k1") >"#)),
        (invalid, r#"malformed comparison: mod("k1") >; got mod("k1") > """#.into())
    );
    assert_eq!(
        message(parse_compare(r#"mod(k1) > "3""#)),
        (invalid, r#"malformed comparison: mod(k1) > "3"; got mod("")  """#.into())
    );
    assert_eq!(message(parse_compare(r#"mod("k1") ~ "3""#)).0, ExitCode::Panic);
}

#[test]
fn requests_take_their_command_flags() {
    match request("get k --prefix --limit=1") {
        PbTxnOpRequest::RequestRange(r) => {
            assert_eq!((r.key, r.range_end, r.limit), (b"k".to_vec(), b"l".to_vec(), 1));
        }
        other => panic!("expected a range, got {other:?}"),
    }
    match request(r#"put "a b" v --prev-kv"#) {
        PbTxnOpRequest::RequestPut(r) => {
            assert_eq!((r.key, r.value, r.prev_kv), (b"a b".to_vec(), b"v".to_vec(), true));
        }
        other => panic!("expected a put, got {other:?}"),
    }
    match request("del a c") {
        PbTxnOpRequest::RequestDeleteRange(r) => assert_eq!(r.range_end, b"c".to_vec()),
        other => panic!("expected a delete, got {other:?}"),
    }
}

#[test]
fn request_errors_match_etcdctl() {
    let invalid = ExitCode::InvalidInput;
    assert_eq!(message(parse_request("put")), (invalid, "invalid txn compare request: put".into()));
    assert_eq!(message(parse_request("foo a b")), (invalid, "invalid txn request: foo a b".into()));
    assert_eq!(message(parse_request("get k -w json")), (invalid, "invalid txn request: get k -w json".into()));
    assert_eq!(
        message(parse_request("put a")),
        (ExitCode::BadArgs, "put command needs 1 argument and input from stdin or 2 arguments".into())
    );
}
