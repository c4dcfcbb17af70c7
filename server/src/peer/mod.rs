//! The peer side of a member: the transport that carries raft messages and
//! snapshots to the other members (`transport`), the service that receives
//! them (`service`), and the calls a member makes to another one outside
//! raft (`client`: the member list when joining, lease calls forwarded to
//! the leader).

pub mod client;
pub mod service;
pub mod transport;

/// raftkv's peer protocol, generated from server/proto/peer.proto.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("raftkvpeer");
}

/// Peer URLs of members this member has heard of outside its registry:
/// the cluster's members when joining, and senders of raft messages (a new
/// member must answer the leader before a snapshot gives it the registry).
pub type Learned = std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<u64, Vec<String>>>>;

/// Since when each peer has been reachable (None while sends fail): etcd's
/// `ActiveSince`, which its membership checks use.
pub type PeerHealth = std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<u64, Option<std::time::Instant>>>>;
