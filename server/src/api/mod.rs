//! Thin gRPC and HTTP adapters, as etcd's v3rpc: validate, call the node,
//! map the error, fill the header. `status` is the one table from errors to
//! gRPC codes.

pub mod cluster;
pub mod election;
pub mod http;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod recipes;
pub mod validate;
pub mod watch;

use tonic::{Code, Status};

use crate::error::Error;

/// etcd's mapping of errors to gRPC codes; clients retry only Unavailable.
pub fn status(e: Error) -> Status {
    use Error::*;
    let code = match &e {
        EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey | RequestTooLarge
        | InvalidSortOption => Code::InvalidArgument,
        Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
        NoSpace | TooManyRequests => Code::ResourceExhausted,
        LeaseNotFound | MemberNotFound => Code::NotFound,
        LeaseExists | NotLeader | BadLeaderTransferee | MemberExists | PeerUrlExists | NotLearner
        | LearnerNotReady | TooManyLearners => Code::FailedPrecondition,
        NoLeader | LeaderChanged | Timeout | Stopped | NotSupportedForLearner | UnhealthyCluster => Code::Unavailable,
        Corrupt => Code::DataLoss,
        // etcd 3.4 has no gRPC status for it: clients see Unknown.
        NotEnoughStartedMembers => Code::Unknown,
        Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// etcd's v3lockpb, generated from server/proto.
#[allow(clippy::all, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's v3electionpb, generated from server/proto.
#[allow(clippy::all, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub type Reply<T> = Result<tonic::Response<T>, Status>;
