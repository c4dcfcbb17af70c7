//! Calls to another member's peer service.

use std::time::Duration;

use tonic::transport::Channel;

use super::proto::peer_client::PeerClient;
use super::proto::{MembersRequest, MembersResponse};
use crate::tls::{ClientTls, Dial};

/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 pings on an idle peer connection: every 10 s, dropped after 20 s
/// without an answer.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(20));

/// A client for the first of `urls` (connected on first use), over TLS
/// for an https:// URL as `tls` says.
pub fn connect(urls: &[String], timeout: Duration, tls: &ClientTls) -> Result<PeerClient<Channel>, String> {
    let url = urls.first().ok_or("the member has no peer URL")?;
    let dial = Dial { connect_timeout: Some(CONNECT_TIMEOUT), timeout: Some(timeout), keep_alive: Some(KEEP_ALIVE) };
    let endpoint = crate::tls::endpoint(url, tls, &dial).map_err(|e| format!("bad peer URL {url}: {e}"))?;
    Ok(PeerClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// Asks the members at `urls`, one after the other, for the cluster's
/// member list (what a member started with `--initial-cluster-state
/// existing` needs to find its own id and the cluster id).
pub async fn members(urls: &[String], tls: &ClientTls) -> Result<MembersResponse, String> {
    let mut errors = Vec::new();
    for url in urls {
        let attempt = async {
            let mut c = connect(std::slice::from_ref(url), Duration::from_secs(3), tls)?;
            c.members(MembersRequest { cluster_id: 0 }).await.map(|r| r.into_inner()).map_err(|s| with_causes(&s))
        };
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(format!("could not fetch the cluster's members from any peer ({})", errors.join("; ")))
}

/// A status's message and the errors under it ("transport error" alone
/// does not say whether a name did not resolve or a certificate was
/// refused).
fn with_causes(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}
