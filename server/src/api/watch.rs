//! The Watch service: one bidirectional stream per client carries many
//! watchers. Requests create, cancel or ask for progress; responses come
//! from the watch hub through one bounded channel per stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::proto::{PbWatchRequest as WatchRequest, PbWatchRequestUnion as RequestUnion, PbWatchResponse as WatchResponse, PbWatchService};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Reply, status};
use crate::error::Error;
use crate::mvcc::RangeEnd;
use crate::node::Node;
use crate::watch::{WatchHub, WatchSpec};

/// Responses buffered per stream before its watchers fall behind (etcd's chanBufLen).
const STREAM_BUFFER: usize = 128;
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;
/// Election timeouts without a leader before a watch stream that requires
/// one is ended (etcd's maxNoLeaderCnt).
const LEADERLESS_ELECTIONS: u32 = 3;
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

pub struct WatchService {
    node: Arc<Node>,
    hub: Arc<WatchHub>,
    streams: AtomicU64,
}

impl WatchService {
    pub fn new(node: Arc<Node>, hub: Arc<WatchHub>) -> Self {
        Self { node, hub, streams: AtomicU64::new(1) }
    }
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Reply<Self::WatchStream> {
        self.node.refuse_learner().map_err(status)?;
        let stream = self.streams.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (node, hub) = (self.node.clone(), self.hub.clone());
        let require_leader = super::requires_leader(req.metadata().as_ref());
        // Each watch is checked as it is created, with the stream's
        // credentials (a token may expire, a role be revoked meanwhile).
        let (token, common_name) = super::credentials(&req);
        let (lost_tx, lost_rx) = oneshot::channel();
        let mut requests = req.into_inner();
        tokio::spawn(async move {
            let mut next_id: i64 = 0;
            // The ids this stream created: counted against
            // --max-watchers-per-stream (those the hub ended, compacted or
            // denied, are dropped when the bound is reached).
            let mut ids = std::collections::HashSet::new();
            let leader_lost = leader_lost(node.clone(), require_leader);
            tokio::pin!(leader_lost);
            loop {
                let r = tokio::select! {
                    r = requests.next() => r,
                    () = &mut leader_lost => {
                        tracing::debug!(stream, "no leader for {LEADERLESS_ELECTIONS} election timeouts: ending a watch stream that requires one");
                        let _ = lost_tx.send(status(Error::NoLeader));
                        break;
                    }
                };
                let r = match r {
                    Some(Ok(r)) => r,
                    // The client closed its side: as etcd, its watchers
                    // go on until it goes away (a JSON gateway client
                    // sends its requests in one body).
                    None => {
                        tokio::select! {
                            () = tx.closed() => {}
                            () = &mut leader_lost => {
                                let _ = lost_tx.send(status(Error::NoLeader));
                            }
                        }
                        break;
                    }
                    Some(Err(_)) => break,
                };
                let header = Some(node.header(0));
                match r.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        let id = if c.watch_id != 0 {
                            c.watch_id
                        } else {
                            while hub.exists((stream, next_id)) {
                                next_id += 1;
                            }
                            next_id
                        };
                        let bound = node.max_watchers_per_stream;
                        let checked_at = node.auth.revision();
                        let admitted = if hub.exists((stream, id)) {
                            Err(DUPLICATE_ID.to_owned())
                        } else if bound > 0 && ids.len() >= bound && hub.live_on_stream(stream, &mut ids) >= bound {
                            Err(Error::TooManyRequests.to_string())
                        } else {
                            let resolved = super::resolve_caller(&node, token.as_deref(), common_name.as_deref()).await;
                            resolved
                                .and_then(|caller| {
                                    node.auth.check(&caller, &c.key, &c.range_end, crate::auth::Need::Read)?;
                                    // Checked again after every auth change.
                                    Ok(match caller {
                                        Some(caller) => caller.user,
                                        None => common_name.clone().unwrap_or_default(),
                                    })
                                })
                                // etcd's reason: the error in gRPC's words.
                                .map_err(|_| crate::watch::ACCESS_LOST.to_owned())
                        };
                        let user = match admitted {
                            Ok(user) => user,
                            Err(reason) => {
                                // etcd: created and canceled at once.
                                let refused =
                                    WatchResponse { header, watch_id: -1, created: true, canceled: true, cancel_reason: reason, ..Default::default() };
                                if tx.send(refused).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                        };
                        let spec = WatchSpec {
                            key: c.key,
                            end: RangeEnd::from_request(&c.range_end),
                            start_rev: c.start_revision,
                            no_put: c.filters.contains(&FILTER_NOPUT),
                            no_delete: c.filters.contains(&FILTER_NODELETE),
                            prev_kv: c.prev_kv,
                            progress_notify: c.progress_notify,
                            fragment: c.fragment,
                            user: Some(user),
                        };
                        let created = WatchResponse { header, watch_id: id, created: true, ..Default::default() };
                        if tx.send(created).await.is_err() {
                            break;
                        }
                        hub.add((stream, id), spec, tx.clone());
                        ids.insert(id);
                        if node.auth.revision() != checked_at {
                            // An auth change applied since the check.
                            hub.recheck_access(|user, key, end| node.auth.may_read(user, key, end));
                        }
                    }
                    Some(RequestUnion::CancelRequest(c)) if hub.remove((stream, c.watch_id)) => {
                        ids.remove(&c.watch_id);
                        let r = WatchResponse { header, watch_id: c.watch_id, canceled: true, ..Default::default() };
                        if tx.send(r).await.is_err() {
                            break;
                        }
                    }
                    // Only when nothing older is still on its way.
                    Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(stream, &tx),
                    Some(RequestUnion::CancelRequest(_)) => {}
                    None => {}
                }
            }
            hub.remove_stream(stream);
        });
        // The stream's last word when its leader is lost: etcd's Unavailable.
        let lost = futures::stream::once(lost_rx).filter_map(|r| async move { r.ok().map(Err) });
        Ok(Response::new(Box::pin(futures::stream::select(ReceiverStream::new(rx).map(Ok), lost))))
    }
}

/// Resolves once this member has known no leader for
/// [`LEADERLESS_ELECTIONS`] election timeouts in a row, as etcd's
/// `monitorLeader` does for streams that require a leader (more patient
/// than with new requests: a reconnecting watch costs more than a refused
/// one); never for a stream that does not require one.
async fn leader_lost(node: Arc<Node>, required: bool) {
    if !required {
        return std::future::pending().await;
    }
    let mut leaderless = 0;
    loop {
        tokio::time::sleep(node.election_timeout).await;
        if node.has_leader() {
            leaderless = 0;
        } else {
            leaderless += 1;
            if leaderless >= LEADERLESS_ELECTIONS {
                return;
            }
        }
    }
}
