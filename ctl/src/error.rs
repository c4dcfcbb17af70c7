//! The error a command ends with: etcdctl's exit code and message.
//!
//! etcdctl prints `Error: <message>` on stderr and exits with one of a few
//! codes; gRPC statuses from the server are shown the way clientv3 shows
//! them (`etcdserver: ...` bare, anything else as `rpc error: ...`).

use std::fmt;

/// etcdctl's exit codes (`cobrautl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Error,
    /// A Go panic's exit status; etcdctl panics on a compare operator it
    /// does not know.
    Panic,
    /// `ExitBadConnection`: the lease commands that run without a deadline
    /// report their errors with it.
    BadConnection,
    InvalidInput,
    BadFeature,
    /// `ExitInterrupted`: a watch the server cancelled.
    Interrupted,
    BadArgs,
}

impl ExitCode {
    /// The process exit status (a panic and a bad connection share 2).
    pub fn status(self) -> u8 {
        match self {
            ExitCode::Error => 1,
            ExitCode::Panic | ExitCode::BadConnection => 2,
            ExitCode::InvalidInput => 3,
            ExitCode::BadFeature => 4,
            ExitCode::Interrupted => 5,
            ExitCode::BadArgs => 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlError {
    pub code: ExitCode,
    pub message: String,
}

impl CtlError {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        CtlError { code, message: message.into() }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Error, message)
    }

    pub fn bad_args(message: impl Into<String>) -> Self {
        Self::new(ExitCode::BadArgs, message)
    }

    pub fn bad_feature(message: impl Into<String>) -> Self {
        Self::new(ExitCode::BadFeature, message)
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ExitCode::InvalidInput, message)
    }

    /// What clientv3 reports when the command timeout runs out.
    pub fn deadline_exceeded() -> Self {
        Self::error("context deadline exceeded")
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

impl From<std::io::Error> for CtlError {
    fn from(e: std::io::Error) -> Self {
        CtlError::error(e.to_string())
    }
}

/// The text clientv3 gives a gRPC status: etcd's own errors (which all start
/// with `etcdserver: `) bare, others in grpc-go's form.
pub fn status_message(status: &tonic::Status) -> String {
    let message = status.message();
    if message.starts_with("etcdserver: ") {
        return message.to_string();
    }
    format!("rpc error: code = {} desc = {}", go_code_name(status.code()), message)
}

fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Whether the request never reached a server (refused, reset, not yet
/// connected), so trying again until the deadline is what clientv3 does.
pub fn is_connection_error(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && !s.message().starts_with("etcdserver: ")
        }
        _ => false,
    }
}

impl From<etcd_client::Error> for CtlError {
    fn from(e: etcd_client::Error) -> Self {
        match e {
            etcd_client::Error::GRpcStatus(s) => CtlError::error(status_message(&s)),
            etcd_client::Error::InvalidArgs(m) => CtlError::error(m),
            other => CtlError::error(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_are_shown_bare() {
        let s = tonic::Status::invalid_argument("etcdserver: key is not provided");
        assert_eq!(status_message(&s), "etcdserver: key is not provided");
    }

    #[test]
    fn other_statuses_use_grpc_go_form() {
        let s = tonic::Status::unimplemented("unknown service");
        assert_eq!(status_message(&s), "rpc error: code = Unimplemented desc = unknown service");
    }
}
