//! The JSON gateway: etcd's HTTP/JSON API on the client port (grpc-gateway
//! in etcd), `POST /v3/kv/range` and the rest. Its routes and JSON shapes
//! come from etcd's own protos (`proto/gateway`, their `google.api.http`
//! annotations): each call is turned into the gRPC call it stands for and
//! served by the same services, in process, so that validation, limits,
//! authentication and errors are the gRPC API's, word for word.
//!
//! As etcd's: a body is one JSON object (none: the empty request); field
//! names as in the protos (`prev_kv`; `prevKv` is read too), bytes in
//! base64, 64-bit integers as strings, enums by name (numbers read too),
//! unknown fields ignored, default values left out. A unary call answers
//! its response; a streaming one (`/v3/watch`, `/v3/lease/keepalive`,
//! `/v3/maintenance/snapshot`, `/v3/election/observe`) one `{"result":
//! ...}` line per message, and reads further requests from the body as it
//! arrives. An error is `{"error", "message", "code"}` with the HTTP status
//! of its gRPC code. The token of an auth-enabled cluster goes in the
//! `Authorization` header; `Grpc-Metadata-<name>` headers become gRPC
//! metadata.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::BodyExt;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions, Value};
use tower::ServiceExt;

/// The descriptor set `build.rs` compiles from `proto/gateway`.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gateway.bin"));

/// One gateway route: the gRPC method it calls.
#[derive(Clone, Debug)]
pub struct Route {
    /// `/package.Service/Method`.
    pub grpc_path: String,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

/// Every `post:` path of the annotated protos (and their additional
/// bindings), with the method it names.
pub static ROUTES: LazyLock<HashMap<String, Route>> = LazyLock::new(|| routes().unwrap_or_else(|e| panic!("the gateway's descriptors: {e}")));

fn routes() -> Result<HashMap<String, Route>, String> {
    let pool = DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string())?;
    let http = pool.get_extension_by_name("google.api.http").ok_or("no google.api.http extension")?;
    let mut routes = HashMap::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let route = Route {
                grpc_path: format!("/{}/{}", service.full_name(), method.name()),
                input: method.input(),
                output: method.output(),
                client_streaming: method.is_client_streaming(),
                server_streaming: method.is_server_streaming(),
            };
            let rule = options.get_extension(&http);
            let mut rules = vec![rule.into_owned()];
            while let Some(Value::Message(rule)) = rules.pop() {
                if let Some(Value::String(path)) = rule.get_field_by_name("post").map(|v| v.into_owned())
                    && !path.is_empty()
                {
                    routes.insert(path, route.clone());
                }
                if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").map(|v| v.into_owned()) {
                    rules.extend(more);
                }
            }
        }
    }
    Ok(routes)
}

/// The gateway's router: every route calls `grpc`, the client port's gRPC
/// services. Bodies are read up to `max_body` bytes.
pub fn router(grpc: axum::Router, max_body: usize) -> axum::Router {
    let mut router = axum::Router::new();
    // etcd also serves every /v3/ path under the /v3beta/ of etcd 3.3.
    let beta = ROUTES.keys().filter_map(|p| Some((format!("/v3beta/{}", p.strip_prefix("/v3/")?), p)));
    for (served, path) in ROUTES.keys().map(|p| (p.clone(), p)).chain(beta) {
        let grpc = grpc.clone();
        let path_owned = path.clone();
        router = router.route(
            &served,
            axum::routing::post(move |req: Request| {
                let grpc = grpc.clone();
                let path = path_owned.clone();
                async move { call(grpc, &path, req, max_body).await }
            }),
        );
    }
    router
}

/// grpc-gateway's HTTP status of a gRPC code.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        C::Cancelled => StatusCode::REQUEST_TIMEOUT,
        C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::Aborted => StatusCode::CONFLICT,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::Unknown | C::Internal | C::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer, as etcd's gateway writes it.
fn error(code: tonic::Code, message: &str) -> Response {
    // In etcd's order (serde_json's objects sort their keys).
    let text = serde_json::Value::from(message).to_string();
    let body = format!(r#"{{"error":{text},"message":{text},"code":{}}}"#, code as i32);
    (http_status(code), [("content-type", "application/json")], body).into_response()
}

/// An error in the middle of a stream, as grpc-gateway writes it.
fn stream_error(code: tonic::Code, message: &str) -> Bytes {
    let status = http_status(code);
    let text = serde_json::Value::from(message).to_string();
    let reason = serde_json::Value::from(status.canonical_reason().unwrap_or_default()).to_string();
    Bytes::from(format!(r#"{{"error":{{"grpc_code":{},"http_code":{},"message":{text},"http_status":{reason}}}}}"#, code as i32, status.as_u16()) + "\n")
}

/// A message from its JSON (the empty request for an empty body).
pub(crate) fn from_json(desc: &MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, String> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    let mut value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    // Unknown fields are dropped first: a reader that ignored them would
    // also take an unknown enum name for the default, which etcd refuses.
    drop_unknown_fields(desc, &mut value);
    DynamicMessage::deserialize_with_options(desc.clone(), value, &DeserializeOptions::new()).map_err(|e| e.to_string())
}

/// Removes, at every depth, the members of a message's JSON object that
/// name none of its fields.
fn drop_unknown_fields(desc: &MessageDescriptor, value: &mut serde_json::Value) {
    let serde_json::Value::Object(object) = value else { return };
    object.retain(|name, _| desc.get_field_by_name(name).or_else(|| desc.get_field_by_json_name(name)).is_some());
    for (name, member) in object.iter_mut() {
        let Some(field) = desc.get_field_by_name(name).or_else(|| desc.get_field_by_json_name(name)) else { continue };
        let prost_reflect::Kind::Message(inner) = field.kind() else { continue };
        if field.is_map() {
            let Some(value_field) = inner.map_entry_value_field().kind().as_message().cloned() else { continue };
            if let serde_json::Value::Object(entries) = member {
                entries.values_mut().for_each(|v| drop_unknown_fields(&value_field, v));
            }
        } else if let serde_json::Value::Array(items) = member {
            items.iter_mut().for_each(|v| drop_unknown_fields(&inner, v));
        } else {
            drop_unknown_fields(&inner, member);
        }
    }
}

/// A message's JSON, as etcd's gateway writes it.
pub(crate) fn to_json(msg: &DynamicMessage) -> Result<Vec<u8>, String> {
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(true).stringify_64_bit_integers(true);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &options).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A gRPC frame: uncompressed, length-prefixed.
fn frame(msg: &DynamicMessage) -> Bytes {
    let body = prost::Message::encode_to_vec(msg);
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.freeze()
}

/// The gRPC status of trailers (or of the headers of a trailers-only
/// response); None when they carry none.
fn grpc_status(headers: &HeaderMap) -> Option<(tonic::Code, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((tonic::Code::from_i32(code), message))
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The headers of the gRPC call: its metadata from the HTTP request's
/// (`Authorization`, `Grpc-Metadata-*`).
fn grpc_headers(from: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("te", HeaderValue::from_static("trailers"));
    for (name, value) in from {
        let name = name.as_str();
        if name == "authorization" {
            headers.insert("authorization", value.clone());
        } else if let Some(meta) = name.strip_prefix("grpc-metadata-")
            && let Ok(meta) = axum::http::HeaderName::from_bytes(meta.as_bytes())
        {
            headers.insert(meta, value.clone());
        }
    }
    headers
}

async fn call(grpc: axum::Router, path: &str, req: Request, max_body: usize) -> Response {
    let Some(route) = ROUTES.get(path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (parts, body) = req.into_parts();
    let headers = grpc_headers(&parts.headers);
    // The requests: one JSON object, or for a client stream, as many as
    // the body brings, each sent on as it is complete.
    let (requests, first_error) = if route.client_streaming {
        (json_stream(body, route.input.clone(), max_body), None)
    } else {
        match axum::body::to_bytes(body, max_body).await {
            Err(e) => return error(tonic::Code::InvalidArgument, &e.to_string()),
            Ok(json) => match from_json(&route.input, &json) {
                Ok(msg) => (futures::stream::once(async move { Ok::<Bytes, std::io::Error>(frame(&msg)) }).boxed(), None),
                Err(e) => (futures::stream::empty().boxed(), Some(e)),
            },
        }
    };
    if let Some(e) = first_error {
        return error(tonic::Code::InvalidArgument, &e);
    }
    let mut grpc_req = axum::http::Request::builder().method("POST").uri(&route.grpc_path);
    if let Some(h) = grpc_req.headers_mut() {
        *h = headers;
    }
    let Ok(mut grpc_req) = grpc_req.body(Body::from_stream(requests)) else {
        return error(tonic::Code::Internal, "cannot build the gRPC request");
    };
    // The connection's details (its client certificate: the user of a
    // request without a token), and nothing of the router's own.
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if let Some(tls) = parts.extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
        grpc_req.extensions_mut().insert(tls.clone());
    }
    if let Some(tcp) = parts.extensions.get::<TcpConnectInfo>() {
        grpc_req.extensions_mut().insert(tcp.clone());
    }
    let resp = match grpc.oneshot(grpc_req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    if let Some((code, message)) = grpc_status(resp.headers())
        && code != tonic::Code::Ok
    {
        return error(code, &message);
    }
    let messages = GrpcMessages { body: resp.into_body(), buffer: BytesMut::new(), output: route.output.clone(), done: false };
    if route.server_streaming {
        let lines = futures::stream::unfold(messages, |mut m| async move {
            let line = match m.next().await? {
                Ok(msg) => match to_json(&msg) {
                    Ok(json) => {
                        let mut line = Vec::with_capacity(json.len() + 12);
                        line.extend_from_slice(b"{\"result\":");
                        line.extend_from_slice(&json);
                        line.extend_from_slice(b"}\n");
                        Bytes::from(line)
                    }
                    Err(e) => {
                        m.done = true;
                        stream_error(tonic::Code::Internal, &e)
                    }
                },
                Err((code, message)) => stream_error(code, &message),
            };
            Some((Ok::<Bytes, std::io::Error>(line), m))
        });
        return (StatusCode::OK, [("content-type", "application/json")], Body::from_stream(lines)).into_response();
    }
    let mut messages = messages;
    match messages.next().await {
        Some(Ok(msg)) => match to_json(&msg) {
            Ok(json) => {
                // The call's own status follows its message.
                if let Some(Err((code, message))) = messages.next().await {
                    return error(code, &message);
                }
                (StatusCode::OK, [("content-type", "application/json")], json).into_response()
            }
            Err(e) => error(tonic::Code::Internal, &e),
        },
        Some(Err((code, message))) => error(code, &message),
        None => error(tonic::Code::Internal, "the call ended without a response"),
    }
}

/// A client stream's requests as they come in the HTTP body: successive
/// JSON objects, each framed for gRPC as soon as it is complete. A
/// malformed one ends the stream.
fn json_stream(body: Body, desc: MessageDescriptor, max_body: usize) -> futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    let state = (body.into_data_stream(), BytesMut::new(), desc, false);
    futures::stream::unfold(state, move |(mut body, mut buffer, desc, mut ended)| async move {
        loop {
            // A complete object at the front of what came so far.
            let start = buffer.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(buffer.len());
            buffer.advance(start);
            if !buffer.is_empty() {
                let mut values = serde_json::Deserializer::from_slice(&buffer).into_iter::<serde::de::IgnoredAny>();
                match values.next() {
                    Some(Ok(_)) => {
                        let end = values.byte_offset();
                        let object = buffer.split_to(end);
                        return match from_json(&desc, &object) {
                            Ok(msg) => Some((Ok(frame(&msg)), (body, buffer, desc, ended))),
                            Err(e) => Some((Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)), (body, BytesMut::new(), desc, true))),
                        };
                    }
                    Some(Err(e)) if !e.is_eof() => {
                        return Some((Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())), (body, BytesMut::new(), desc, true)));
                    }
                    _ => {}
                }
            }
            if ended {
                return None;
            }
            if buffer.len() > max_body {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "request body too large");
                return Some((Err(e), (body, BytesMut::new(), desc, true)));
            }
            match body.next().await {
                Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(std::io::Error::other(e.to_string())), (body, BytesMut::new(), desc, true))),
                None => ended = true,
            }
        }
    })
    .boxed()
}

/// The messages of a gRPC response body, then its status if not OK.
struct GrpcMessages {
    body: Body,
    buffer: BytesMut,
    output: MessageDescriptor,
    done: bool,
}

impl GrpcMessages {
    async fn next(&mut self) -> Option<Result<DynamicMessage, (tonic::Code, String)>> {
        if self.done {
            return None;
        }
        loop {
            if self.buffer.len() >= 5 {
                let len = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
                if self.buffer.len() >= 5 + len {
                    if self.buffer[0] != 0 {
                        self.done = true;
                        return Some(Err((tonic::Code::Internal, "a compressed response".into())));
                    }
                    self.buffer.advance(5);
                    let message = self.buffer.split_to(len);
                    return Some(DynamicMessage::decode(self.output.clone(), message.freeze()).map_err(|e| (tonic::Code::Internal, e.to_string())));
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        self.done = true;
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return match grpc_status(&trailers) {
                            Some((tonic::Code::Ok, _)) | None => None,
                            Some(status) => Some(Err(status)),
                        };
                    }
                },
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err((tonic::Code::Unavailable, e.to_string())));
                }
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_etcds_gateway_is_served() {
        for (path, grpc) in [
            ("/v3/kv/range", "/etcdserverpb.KV/Range"),
            ("/v3/kv/put", "/etcdserverpb.KV/Put"),
            ("/v3/kv/deleterange", "/etcdserverpb.KV/DeleteRange"),
            ("/v3/kv/txn", "/etcdserverpb.KV/Txn"),
            ("/v3/kv/compaction", "/etcdserverpb.KV/Compact"),
            ("/v3/watch", "/etcdserverpb.Watch/Watch"),
            ("/v3/lease/grant", "/etcdserverpb.Lease/LeaseGrant"),
            ("/v3/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
            ("/v3/kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
            ("/v3/lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive"),
            ("/v3/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive"),
            ("/v3/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
            ("/v3/cluster/member/list", "/etcdserverpb.Cluster/MemberList"),
            ("/v3/cluster/member/promote", "/etcdserverpb.Cluster/MemberPromote"),
            ("/v3/maintenance/status", "/etcdserverpb.Maintenance/Status"),
            ("/v3/maintenance/snapshot", "/etcdserverpb.Maintenance/Snapshot"),
            ("/v3/maintenance/transfer-leadership", "/etcdserverpb.Maintenance/MoveLeader"),
            ("/v3/auth/authenticate", "/etcdserverpb.Auth/Authenticate"),
            ("/v3/auth/user/changepw", "/etcdserverpb.Auth/UserChangePassword"),
            ("/v3/auth/role/grant", "/etcdserverpb.Auth/RoleGrantPermission"),
            ("/v3/lock/lock", "/v3lockpb.Lock/Lock"),
            ("/v3/election/observe", "/v3electionpb.Election/Observe"),
        ] {
            assert_eq!(ROUTES.get(path).map(|r| r.grpc_path.as_str()), Some(grpc), "{path}");
        }
        assert!(ROUTES["/v3/watch"].client_streaming && ROUTES["/v3/watch"].server_streaming);
        assert!(!ROUTES["/v3/kv/range"].client_streaming && !ROUTES["/v3/kv/range"].server_streaming);
    }

    #[test]
    fn json_is_etcds_proto_names_base64_and_64_bit_strings() {
        let route = &ROUTES["/v3/kv/range"];
        let req = from_json(&route.input, br#"{"key":"Zm9v","keysOnly":true,"limit":5,"sort_order":"DESCEND","count_only":true,"unknown":1}"#).expect("parsed");
        assert_eq!(to_json(&req).expect("json"), br#"{"key":"Zm9v","limit":"5","sort_order":"DESCEND","keys_only":true,"count_only":true}"#.to_vec());
        let empty = from_json(&route.input, b"  ").expect("the empty request");
        assert_eq!(to_json(&empty).expect("json"), b"{}".to_vec());
        for bad in [&br#"{"key":"!!!"}"#[..], br#"{"key":1}"#, br#"[1]"#, br#"{"key":"Zm9v"} x"#, br#"{"key":"#, br#"{"sort_order":"BOGUS"}"#] {
            assert!(from_json(&route.input, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn errors_are_written_in_etcds_order_and_http_status() {
        let resp = error(tonic::Code::PermissionDenied, "etcdserver: \"denied\"");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 10).await.expect("body");
        assert_eq!(&body[..], br#"{"error":"etcdserver: \"denied\"","message":"etcdserver: \"denied\"","code":7}"#);
        let line = stream_error(tonic::Code::Unavailable, "no leader");
        assert_eq!(&line[..], b"{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"no leader\",\"http_status\":\"Service Unavailable\"}}\n");
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("etcdserver:%20key%20is%20not%20provided"), "etcdserver: key is not provided");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
