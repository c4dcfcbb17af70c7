//! Thin gRPC and HTTP adapters, as etcd's v3rpc: validate, call the node,
//! map the error, fill the header. `status` is the one table from errors to
//! gRPC codes.

pub mod auth;
pub mod cluster;
pub mod coalesce;
pub mod election;
pub mod front;
pub mod gateway;
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

/// gRPC metadata by which a client asks that its request fail, rather than
/// wait or read stale data, while this member has no leader (clientv3's
/// `WithRequireLeader`, which kube-apiserver puts on its watches).
pub const REQUIRE_LEADER_KEY: &str = "hasleader";

/// Whether a request carries [`REQUIRE_LEADER_KEY`]` = true`.
pub fn requires_leader(headers: &axum::http::HeaderMap) -> bool {
    headers.get(REQUIRE_LEADER_KEY).is_some_and(|v| v.as_bytes() == b"true")
}

/// etcd's interceptors for the JSON gateway's calls, as [`front::Front`]
/// for gRPC ones: a request requiring a leader is refused with
/// "etcdserver: no leader" when this member knows none.
pub async fn require_leader(
    axum::extract::State(node): axum::extract::State<std::sync::Arc<crate::node::Node>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if requires_leader(req.headers()) && !node.has_leader() {
        return status(Error::NoLeader).into_http();
    }
    next.run(req).await
}

/// Who sent `req` (see [`crate::auth::AuthStore::caller`]): None while
/// authentication is disabled; else the user of its `token` metadata, or
/// the common name of its verified client certificate.
/// (The request is read before the future is made: a streaming request
/// is not `Sync`, and must not be held across an await.)
pub fn caller<'a, T>(node: &'a crate::node::Node, req: &tonic::Request<T>) -> impl Future<Output = Result<Option<crate::auth::Caller>, Status>> + Send + 'a {
    let credentials = node.auth.enabled().then(|| credentials(req));
    async move {
        let Some((token, common_name)) = credentials else { return Ok(None) };
        resolve_caller(node, token.as_deref(), common_name.as_deref()).await.map_err(status)
    }
}

/// [`crate::auth::AuthStore::caller`], patient with a simple token another
/// member handed out: it reaches this member through raft, and a client
/// may use it here before this member has applied it. An unknown simple
/// token is looked up again once this member has applied what the leader
/// had committed (a read index), as etcd waits for the raft index its
/// simple tokens carry.
pub async fn resolve_caller(node: &crate::node::Node, token: Option<&str>, common_name: Option<&str>) -> Result<Option<crate::auth::Caller>, Error> {
    match node.auth.caller(token, common_name) {
        Err(Error::InvalidAuthToken) if token.is_some() && !node.auth.uses_jwt() => {
            node.linearizable_read().await?;
            node.auth.caller(token, common_name)
        }
        other => other,
    }
}

/// A request's credentials: its `token` metadata, else the common name of
/// its verified client certificate.
pub fn credentials<T>(req: &tonic::Request<T>) -> (Option<String>, Option<String>) {
    // "authorization": what the JSON gateway passes (etcd reads both).
    let token = req.metadata().get("token").or_else(|| req.metadata().get("authorization"));
    match token.and_then(|v| v.to_str().ok()) {
        Some(token) => (Some(token.to_owned()), None),
        None => (None, req.peer_certs().and_then(|certs| certs.first().and_then(|c| common_name(c)))),
    }
}

/// The subject common name of a certificate.
fn common_name(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// An admin check as etcd's maintenance service answers it: the auth
/// package's own words, untranslated.
pub fn maintenance_admin(node: &crate::node::Node, caller: &Option<crate::auth::Caller>) -> Result<(), Status> {
    node.auth.check_admin(caller).map_err(|e| {
        status(match e {
            Error::UserEmpty => Error::RawAuth("auth: user name is empty"),
            Error::UserNotFound => Error::RawAuth("auth: user name not found"),
            Error::PermissionDenied => Error::RawAuth("auth: permission denied"),
            other => other,
        })
    })
}

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
        UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt | AuthOldRevision => Code::InvalidArgument,
        RawAuth(_) => Code::Unknown,
        RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound | RoleAlreadyExist | RoleNotFound | RoleNotGranted
        | PermissionNotGranted | AuthNotEnabled => Code::FailedPrecondition,
        PermissionDenied => Code::PermissionDenied,
        InvalidAuthToken => Code::Unauthenticated,
        Unsupported(_) => Code::Unimplemented,
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

/// etcd's Auth service and its messages (etcdserverpb), generated from
/// server/proto.
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's authpb: the auth store's users, roles and permissions.
#[allow(clippy::all, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's v3electionpb, generated from server/proto.
#[allow(clippy::all, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub type Reply<T> = Result<tonic::Response<T>, Status>;
