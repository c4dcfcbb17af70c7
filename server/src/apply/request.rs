//! The requests raft carries: etcd's own request messages in an envelope
//! with the id the proposing member waits on.

use etcd_client::proto::{
    PbCompactionRequest, PbDeleteRequest, PbLeaseGrantRequest, PbLeaseRevokeRequest, PbPutRequest, PbTxnRequest,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftRequest {
    /// Unique per proposal; the proposer waits for the result under it.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7")]
    pub op: Option<Op>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "2")]
    Put(PbPutRequest),
    #[prost(message, tag = "3")]
    DeleteRange(PbDeleteRequest),
    #[prost(message, tag = "4")]
    Txn(PbTxnRequest),
    #[prost(message, tag = "5")]
    Compaction(PbCompactionRequest),
    #[prost(message, tag = "6")]
    LeaseGrant(PbLeaseGrantRequest),
    #[prost(message, tag = "7")]
    LeaseRevoke(PbLeaseRevokeRequest),
}
