//! The requests raft carries: etcd's own request messages in an envelope
//! with the id the proposing member waits on.

use crate::membership::Member;
use etcd_client::proto::{
    PbAlarmRequest, PbCompactionRequest, PbDeleteRequest, PbLeaseGrantRequest, PbLeaseRevokeRequest, PbPutRequest, PbTxnRequest,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftRequest {
    /// Unique per proposal; the proposer waits for the result under it.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13")]
    pub op: Option<Op>,
    /// The member that proposed it: only that member has a waiter for
    /// `id` (ids are unique per member, not across members).
    #[prost(uint64, tag = "10")]
    pub proposer: u64,
    /// The auth revision the request's rights were checked at (0: not
    /// checked, authentication disabled or a member's own request).
    #[prost(uint64, tag = "14")]
    pub auth_revision: u64,
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
    /// A member publishes its name and client URLs after it starts.
    #[prost(message, tag = "8")]
    MemberAttributes(Member),
    /// New peer URLs for a member.
    #[prost(message, tag = "9")]
    MemberPeerUrls(Member),
    /// The leader's checkpoint of leases' remaining TTLs (etcd's
    /// LeaseCheckpointRequest).
    #[prost(message, tag = "11")]
    LeaseCheckpoint(LeaseCheckpointRequest),
    /// An alarm raised or disarmed.
    #[prost(message, tag = "12")]
    Alarm(PbAlarmRequest),
    /// A change to the auth store (passwords hashed already).
    #[prost(message, tag = "13")]
    Auth(crate::auth::AuthOp),
}

/// etcd's LeaseCheckpointRequest (etcd-client does not export it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpointRequest {
    #[prost(message, repeated, tag = "1")]
    pub checkpoints: Vec<LeaseCheckpoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpoint {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub remaining_ttl: i64,
}

/// The context of a membership change: who waits for it, and the member
/// the registry records.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfContext {
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    #[prost(message, optional, tag = "2")]
    pub member: Option<Member>,
    /// The member that proposed it (see `RaftRequest::proposer`).
    #[prost(uint64, tag = "3")]
    pub proposer: u64,
}
