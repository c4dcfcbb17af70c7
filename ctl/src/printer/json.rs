//! The `json` format: Go's `encoding/json` of etcd 3.4's gogo-protobuf
//! structs. Field names are their json tags, zero values are left out
//! (`omitempty`), uint64 ids are plain numbers, bytes are base64, and a
//! transaction's responses keep the Go oneof wrapper (`{"Response":...}`).

use std::io::{self, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use etcd_client::proto::{
    PbAuthRoleGetResponse, PbAuthRoleListResponse, PbAuthUserGetResponse, PbAuthUserListResponse, PbDeleteResponse, PbKeyValue, PbLeaseGrantResponse, PbLeaseKeepAliveResponse,
    PbLeaseLeasesResponse, PbLeaseRevokeResponse, PbLeaseTimeToLiveResponse, PbMember,
    PbMemberAddResponse, PbMemberListResponse, PbMoveLeaderResponse, PbPutResponse,
    PbRangeResponse, PbResponseHeader, PbStatusResponse, PbTxnOpResponse, PbTxnResponse,
    PbWatchResponse,
};

use super::{EpHashKv, EpHealth, EpStatus};

/// A JSON value that keeps its fields in the order they were added.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Object(Vec<(&'static str, Json)>),
    Array(Vec<Json>),
    Number(String),
    String(String),
    Bool(bool),
    Null,
}

/// Builds an object, leaving out zero values the way `omitempty` does.
#[derive(Default)]
struct Obj(Vec<(&'static str, Json)>);

impl Obj {
    fn num(mut self, name: &'static str, v: impl Into<i128>) -> Self {
        let v = v.into();
        if v != 0 {
            self.0.push((name, Json::Number(v.to_string())));
        }
        self
    }
    fn bytes(mut self, name: &'static str, v: &[u8]) -> Self {
        if !v.is_empty() {
            self.0.push((name, Json::String(BASE64.encode(v))));
        }
        self
    }
    fn string(mut self, name: &'static str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.push((name, Json::String(v.to_string())));
        }
        self
    }
    fn strings(self, name: &'static str, v: &[String]) -> Self {
        self.array(name, v.iter().map(|s| Json::String(s.clone())).collect())
    }
    fn flag(mut self, name: &'static str, v: bool) -> Self {
        if v {
            self.0.push((name, Json::Bool(true)));
        }
        self
    }
    fn object(mut self, name: &'static str, v: Option<Json>) -> Self {
        if let Some(v) = v {
            self.0.push((name, v));
        }
        self
    }
    fn array(mut self, name: &'static str, v: Vec<Json>) -> Self {
        if !v.is_empty() {
            self.0.push((name, Json::Array(v)));
        }
        self
    }
    /// A field printed even when zero (no `omitempty` in its tag).
    fn always(mut self, name: &'static str, v: Json) -> Self {
        self.0.push((name, v));
        self
    }
    fn build(self) -> Json {
        Json::Object(self.0)
    }
}

fn header(h: &Option<PbResponseHeader>) -> Option<Json> {
    h.as_ref().map(|h| {
        Obj::default()
            .num("cluster_id", h.cluster_id)
            .num("member_id", h.member_id)
            .num("revision", h.revision)
            .num("raft_term", h.raft_term)
            .build()
    })
}

fn kv(kv: &PbKeyValue) -> Json {
    Obj::default()
        .bytes("key", &kv.key)
        .num("create_revision", kv.create_revision)
        .num("mod_revision", kv.mod_revision)
        .num("version", kv.version)
        .bytes("value", &kv.value)
        .num("lease", kv.lease)
        .build()
}

pub fn put(r: &PbPutResponse) -> Json {
    Obj::default()
        .object("header", header(&r.header))
        .object("prev_kv", r.prev_kv.as_ref().map(kv))
        .build()
}

pub fn range(r: &PbRangeResponse) -> Json {
    Obj::default()
        .object("header", header(&r.header))
        .array("kvs", r.kvs.iter().map(kv).collect())
        .flag("more", r.more)
        .num("count", r.count)
        .build()
}

pub fn delete(r: &PbDeleteResponse) -> Json {
    Obj::default()
        .object("header", header(&r.header))
        .num("deleted", r.deleted)
        .array("prev_kvs", r.prev_kvs.iter().map(kv).collect())
        .build()
}

pub fn txn(r: &PbTxnResponse) -> Json {
    let responses = r
        .responses
        .iter()
        .map(|op| {
            let inner = match &op.response {
                Some(PbTxnOpResponse::ResponsePut(r)) => Some(("ResponsePut", put(r))),
                Some(PbTxnOpResponse::ResponseRange(r)) => Some(("ResponseRange", range(r))),
                Some(PbTxnOpResponse::ResponseDeleteRange(r)) => {
                    Some(("ResponseDeleteRange", delete(r)))
                }
                Some(PbTxnOpResponse::ResponseTxn(r)) => Some(("ResponseTxn", txn(r))),
                None => None,
            };
            let wrapped = inner.map(|(name, v)| Json::Object(vec![(name, v)]));
            Obj::default().object("Response", wrapped).build()
        })
        .collect();
    Obj::default()
        .object("header", header(&r.header))
        .flag("succeeded", r.succeeded)
        .array("responses", responses)
        .build()
}

/// `clientv3.WatchResponse`: a Go struct without json tags, so its field
/// names are capitalised and always printed; the header is a value, and the
/// events keep mvccpb's tags (the event type as a number).
pub fn watch(r: &PbWatchResponse) -> Json {
    let events = if r.events.is_empty() {
        Json::Null
    } else {
        let events = r.events.iter().map(|ev| {
            Obj::default()
                .num("type", ev.r#type)
                .object("kv", ev.kv.as_ref().map(kv))
                .object("prev_kv", ev.prev_kv.as_ref().map(kv))
                .build()
        });
        Json::Array(events.collect())
    };
    Obj::default()
        .always("Header", header(&Some(r.header.unwrap_or_default())).unwrap_or(Json::Null))
        .always("Events", events)
        .always("CompactRevision", int(r.compact_revision))
        .always("Canceled", Json::Bool(r.canceled))
        .always("Created", Json::Bool(r.created))
        .build()
}

fn member(m: &PbMember) -> Json {
    Obj::default()
        .num("ID", m.id)
        .string("name", &m.name)
        .strings("peerURLs", &m.peer_ur_ls)
        .strings("clientURLs", &m.client_ur_ls)
        .flag("isLearner", m.is_learner)
        .build()
}

pub fn member_list(r: &PbMemberListResponse) -> Json {
    Obj::default()
        .object("header", header(&r.header))
        .array("members", r.members.iter().map(member).collect())
        .build()
}

pub fn member_add(r: &PbMemberAddResponse) -> Json {
    Obj::default()
        .object("header", header(&r.header))
        .object("member", r.member.as_ref().map(member))
        .array("members", r.members.iter().map(member).collect())
        .build()
}

/// The member remove and update responses: a header and the members left.
pub fn members_changed(h: &Option<PbResponseHeader>, members: &[PbMember]) -> Json {
    Obj::default()
        .object("header", header(h))
        .array("members", members.iter().map(member).collect())
        .build()
}

pub fn move_leader(r: &PbMoveLeaderResponse) -> Json {
    Obj::default().object("header", header(&r.header)).build()
}

fn status(s: &PbStatusResponse) -> Json {
    Obj::default()
        .object("header", header(&s.header))
        .string("version", &s.version)
        .num("dbSize", s.db_size)
        .num("leader", s.leader)
        .num("raftIndex", s.raft_index)
        .num("raftTerm", s.raft_term)
        .num("raftAppliedIndex", s.raft_applied_index)
        .strings("errors", &s.errors)
        .num("dbSizeInUse", s.db_size_in_use)
        .flag("isLearner", s.is_learner)
        .build()
}

/// `[]epStatus`, made empty rather than nil: `[]` when no endpoint answered.
pub fn endpoint_status(list: &[EpStatus]) -> Json {
    let items = list.iter().map(|ep| {
        Obj::default()
            .always("Endpoint", Json::String(ep.endpoint.clone()))
            .always("Status", status(&ep.status))
            .build()
    });
    Json::Array(items.collect())
}

/// `[]epHashKV`, empty rather than nil, like the status list.
pub fn endpoint_hashkv(list: &[EpHashKv]) -> Json {
    let items = list.iter().map(|h| {
        let hash_kv = Obj::default()
            .object("header", header(&h.hash_kv.header))
            .num("hash", h.hash_kv.hash)
            .num("compact_revision", h.hash_kv.compact_revision)
            .build();
        Obj::default()
            .always("Endpoint", Json::String(h.endpoint.clone()))
            .always("HashKV", hash_kv)
            .build()
    });
    Json::Array(items.collect())
}

pub fn endpoint_health(list: &[EpHealth]) -> Json {
    let items = list.iter().map(|h| {
        Obj::default()
            .always("endpoint", Json::String(h.endpoint.clone()))
            .always("health", Json::Bool(h.health))
            .always("took", Json::String(h.took.clone()))
            .string("error", &h.error)
            .build()
    });
    Json::Array(items.collect())
}

/// clientv3's lease responses are Go structs embedding `*pb.ResponseHeader`:
/// its fields sit at the top level, and the struct's own fields have no
/// json tags or no `omitempty`, so they are always printed.
fn embedded_header(h: &Option<PbResponseHeader>) -> Obj {
    let h = h.unwrap_or_default();
    Obj::default()
        .num("cluster_id", h.cluster_id)
        .num("member_id", h.member_id)
        .num("revision", h.revision)
        .num("raft_term", h.raft_term)
}

fn int(v: i64) -> Json {
    Json::Number(v.to_string())
}

pub fn lease_grant(r: &PbLeaseGrantResponse) -> Json {
    embedded_header(&r.header)
        .always("ID", int(r.id))
        .always("TTL", int(r.ttl))
        .always("Error", Json::String(r.error.clone()))
        .build()
}

/// `clientv3.LeaseRevokeResponse` is the protobuf struct itself.
pub fn lease_revoke(r: &PbLeaseRevokeResponse) -> Json {
    Obj::default().object("header", header(&r.header)).build()
}

pub fn lease_keep_alive(r: &PbLeaseKeepAliveResponse) -> Json {
    embedded_header(&r.header).always("ID", int(r.id)).always("TTL", int(r.ttl)).build()
}

/// `keys` is a `[][]byte`: `null` unless the server sent keys.
pub fn lease_time_to_live(r: &PbLeaseTimeToLiveResponse) -> Json {
    let keys = if r.keys.is_empty() {
        Json::Null
    } else {
        Json::Array(r.keys.iter().map(|k| Json::String(BASE64.encode(k))).collect())
    };
    embedded_header(&r.header)
        .always("id", int(r.id))
        .always("ttl", int(r.ttl))
        .always("granted-ttl", int(r.granted_ttl))
        .always("keys", keys)
        .build()
}

/// clientv3 copies the leases into a slice it allocates, so an empty list
/// is `[]`, not `null`.
pub fn lease_leases(r: &PbLeaseLeasesResponse) -> Json {
    let leases = r.leases.iter().map(|l| Obj::default().always("id", int(l.id)).build());
    embedded_header(&r.header).always("leases", Json::Array(leases.collect())).build()
}

/// Prints a value on one line; `None` is Go's nil slice, `null`.
/// An answer with nothing but its header (user add, role grant and the
/// like).
pub fn header_only(h: &Option<PbResponseHeader>) -> Json {
    Obj::default().object("header", header(h)).build()
}

pub fn user_get(r: &PbAuthUserGetResponse) -> Json {
    Obj::default().object("header", header(&r.header)).strings("roles", &r.roles).build()
}

pub fn user_list(r: &PbAuthUserListResponse) -> Json {
    Obj::default().object("header", header(&r.header)).strings("users", &r.users).build()
}

pub fn role_list(r: &PbAuthRoleListResponse) -> Json {
    Obj::default().object("header", header(&r.header)).strings("roles", &r.roles).build()
}

/// A role's permissions: authpb's json tags (`permType`, `key`,
/// `range_end`), READ (0) left out as a zero.
pub fn role_get(r: &PbAuthRoleGetResponse) -> Json {
    let perms = r
        .perm
        .iter()
        .map(|p| Obj::default().num("permType", p.perm_type).bytes("key", &p.key).bytes("range_end", &p.range_end).build())
        .collect();
    Obj::default().object("header", header(&r.header)).array("perm", perms).build()
}

pub fn print(w: &mut dyn Write, v: impl Into<Option<Json>>) -> io::Result<()> {
    let mut out = String::new();
    match v.into() {
        Some(v) => render(&mut out, &v),
        None => out.push_str("null"),
    }
    out.push('\n');
    w.write_all(out.as_bytes())
}

pub fn render(out: &mut String, v: &Json) {
    match v {
        Json::Object(fields) => {
            out.push('{');
            for (i, (name, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(out, name);
                out.push(':');
                render(out, v);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(out, v);
            }
            out.push(']');
        }
        Json::Number(n) => out.push_str(n),
        Json::String(s) => string(out, s),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Null => out.push_str("null"),
    }
}

/// A string as Go's encoder writes it, HTML-safe escapes included.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
