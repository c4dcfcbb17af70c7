//! The Watch service: one bidirectional stream per client carries many
//! watchers. Requests create, cancel or ask for progress; responses come
//! from the watch hub through one bounded channel per stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::proto::{PbWatchRequest as WatchRequest, PbWatchRequestUnion as RequestUnion, PbWatchResponse as WatchResponse, PbWatchService};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Reply, status};
use crate::mvcc::RangeEnd;
use crate::node::Node;
use crate::watch::{WatchHub, WatchSpec};

/// Responses buffered per stream before its watchers fall behind (etcd's chanBufLen).
const STREAM_BUFFER: usize = 128;
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;
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
        let mut requests = req.into_inner();
        tokio::spawn(async move {
            let mut next_id: i64 = 0;
            while let Some(Ok(r)) = requests.next().await {
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
                        if hub.exists((stream, id)) {
                            let dup = WatchResponse {
                                header,
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                cancel_reason: DUPLICATE_ID.into(),
                                ..Default::default()
                            };
                            if tx.send(dup).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        let spec = WatchSpec {
                            key: c.key,
                            end: RangeEnd::from_request(&c.range_end),
                            start_rev: c.start_revision,
                            no_put: c.filters.contains(&FILTER_NOPUT),
                            no_delete: c.filters.contains(&FILTER_NODELETE),
                            prev_kv: c.prev_kv,
                            progress_notify: c.progress_notify,
                            fragment: c.fragment,
                        };
                        let created = WatchResponse { header, watch_id: id, created: true, ..Default::default() };
                        if tx.send(created).await.is_err() {
                            break;
                        }
                        hub.add((stream, id), spec, tx.clone());
                    }
                    Some(RequestUnion::CancelRequest(c)) if hub.remove((stream, c.watch_id)) => {
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
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}
