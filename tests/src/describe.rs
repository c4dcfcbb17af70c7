//! Deterministic one-line descriptions of responses and errors. A scenario
//! run by [`crate::for_both`] records these lines, so they hold only what must
//! be equal between etcd and raftkv: keys, values, revisions, versions,
//! leases, counts, and gRPC code plus message. Cluster and member ids and the
//! raft term differ between any two clusters and never appear.

use etcd_client::{
    DeleteResponse, Error, GetResponse, KeyValue, PutResponse, ResponseHeader, TxnOpResponse,
    TxnResponse,
};

/// The gRPC code name (as in `tonic::Code`'s Debug, e.g. `InvalidArgument`)
/// and message of a server error; `None` for a client-side error.
pub fn grpc_status(err: &Error) -> Option<(String, String)> {
    match err {
        Error::GRpcStatus(status) => {
            Some((format!("{:?}", status.code()), status.message().to_owned()))
        }
        _ => None,
    }
}

/// `InvalidArgument: etcdserver: key is not provided`, or the client error.
pub fn error(err: &Error) -> String {
    match grpc_status(err) {
        Some((code, message)) => format!("{code}: {message}"),
        None => format!("client error: {err}"),
    }
}

/// `ok <description>` or `err <code>: <message>`.
pub fn outcome<T>(result: &Result<T, Error>, describe: impl FnOnce(&T) -> String) -> String {
    match result {
        Ok(value) => format!("ok {}", describe(value)),
        Err(err) => format!("err {}", error(err)),
    }
}

/// A header's revision, 0 when the header is missing.
pub fn revision(header: Option<&ResponseHeader>) -> i64 {
    header.map_or(0, ResponseHeader::revision)
}

/// Bytes as text, non-printable bytes escaped.
pub fn bytes(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// `key=value create=C mod=M version=V lease=L`.
pub fn kv(kv: &KeyValue) -> String {
    format!(
        "{}={} create={} mod={} version={} lease={}",
        bytes(kv.key()),
        bytes(kv.value()),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease()
    )
}

/// Every key of the keyspace described (value, revisions, version, lease),
/// with the revision the member answered at: what a backup and its restore
/// must agree on.
pub async fn keyspace(c: &mut etcd_client::Client) -> Result<(i64, Vec<String>), Error> {
    let r = c.get("", Some(etcd_client::GetOptions::new().with_all_keys())).await?;
    let rev = r.header().map_or(0, |h| h.revision());
    Ok((rev, r.kvs().iter().map(kv).collect()))
}

pub fn kvs(kvs: &[KeyValue]) -> String {
    let items: Vec<String> = kvs.iter().map(kv).collect();
    format!("[{}]", items.join(", "))
}

pub fn get(resp: &GetResponse) -> String {
    format!(
        "rev={} count={} more={} kvs={}",
        revision(resp.header()),
        resp.count(),
        resp.more(),
        kvs(resp.kvs())
    )
}

pub fn put(resp: &PutResponse) -> String {
    let prev = resp.prev_key().map_or_else(|| "none".to_owned(), kv);
    format!("rev={} prev={prev}", revision(resp.header()))
}

pub fn delete(resp: &DeleteResponse) -> String {
    format!(
        "rev={} deleted={} prev={}",
        revision(resp.header()),
        resp.deleted(),
        kvs(resp.prev_kvs())
    )
}

pub fn txn(resp: &TxnResponse) -> String {
    let ops: Vec<String> = resp.op_responses().iter().map(txn_op).collect();
    format!(
        "rev={} succeeded={} ops=[{}]",
        revision(resp.header()),
        resp.succeeded(),
        ops.join("; ")
    )
}

fn txn_op(op: &TxnOpResponse) -> String {
    match op {
        TxnOpResponse::Put(r) => format!("put({})", put(r)),
        TxnOpResponse::Get(r) => format!("get({})", get(r)),
        TxnOpResponse::Delete(r) => format!("delete({})", delete(r)),
        TxnOpResponse::Txn(r) => format!("txn({})", txn(r)),
    }
}
