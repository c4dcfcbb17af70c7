//! The client port's front: what every request passes before its route.
//!
//! A gRPC call is counted (`metrics`), refused when it requires a leader
//! this member does not know, and handed to the router; an HTTP request
//! (the JSON gateway, `/health`, `/version`, `/metrics`) goes through
//! etcd's access control (CORS, `--host-whitelist`) and gets a 404 for a
//! path nothing serves. Both hold [`super::coalesce::answering`] while
//! they are answered.
//!
//! One service rather than a stack of `axum::middleware::from_fn` layers:
//! each such layer clones and boxes the rest of the stack and boxes a
//! future for every request, and with four of them that was a fifth of
//! the CPU of a one-key range (docs/benchmarks.md, "Issue 19: session 20").

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use tower::{Service, ServiceExt};

use crate::error::Error;
use crate::node::Node;

#[derive(Clone)]
pub struct Front {
    node: Arc<Node>,
    /// Every route, bare: what gRPC calls reach.
    grpc: Router,
    /// The same routes behind the HTTP middleware.
    web: Router,
}

impl Front {
    pub fn new(node: Arc<Node>, routes: Router, access: super::http::AccessControl) -> Self {
        let web = routes
            .clone()
            .layer(axum::middleware::from_fn(super::http::not_found))
            .layer(axum::middleware::from_fn_with_state(Arc::new(access), super::http::access_control));
        Self { node, grpc: routes, web }
    }
}

/// A gRPC request, by its content type (`application/grpc`, `+proto`...).
fn is_grpc(req: &Request) -> bool {
    req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Routers are always ready; each call takes a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let answering = super::coalesce::answering();
        if !is_grpc(&req) {
            let web = self.web.clone();
            return Box::pin(async move {
                let _answering = answering;
                web.oneshot(req).await
            });
        }
        let call = crate::metrics::GrpcCall::start(&req);
        // etcd's interceptors: a call requiring a leader, unary or a
        // stream, is refused with "etcdserver: no leader" while this
        // member knows none (a watch that loses its leader later is ended
        // by the watch service).
        if super::requires_leader(req.headers()) && !self.node.has_leader() {
            let resp = super::status(Error::NoLeader).into_http();
            return Box::pin(std::future::ready(Ok(crate::metrics::GrpcCall::answered(call, resp))));
        }
        let grpc = self.grpc.clone();
        Box::pin(async move {
            let _answering = answering;
            let resp = grpc.oneshot(req).await?;
            Ok(crate::metrics::GrpcCall::answered(call, resp))
        })
    }
}
