//! Calls to another member's peer service.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::proto::peer_client::PeerClient;
use super::proto::{MembersRequest, MembersResponse};

/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A client for the first of `urls` (connected on first use).
pub fn connect(urls: &[String], timeout: Duration) -> Result<PeerClient<Channel>, String> {
    let url = urls.first().ok_or("the member has no peer URL")?;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad peer URL {url}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(PeerClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// Asks the members at `urls`, one after the other, for the cluster's
/// member list (what a member started with `--initial-cluster-state
/// existing` needs to find its own id and the cluster id).
pub async fn members(urls: &[String]) -> Result<MembersResponse, String> {
    let mut errors = Vec::new();
    for url in urls {
        let attempt = async {
            let mut c = connect(std::slice::from_ref(url), Duration::from_secs(3))?;
            c.members(MembersRequest { cluster_id: 0 }).await.map(|r| r.into_inner()).map_err(|s| s.message().to_owned())
        };
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(format!("could not fetch the cluster's members from any peer ({})", errors.join("; ")))
}
