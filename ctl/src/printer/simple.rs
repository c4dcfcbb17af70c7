//! The `simple` format: keys and values on their own lines, `OK` for a put,
//! the deleted count for a delete, comma-joined rows for cluster commands,
//! one sentence per lease answer, membership change or leader transfer,
//! with lease and member ids in hex.

use std::io::{self, Write};

use etcd_client::proto::{
    PbDeleteResponse, PbKeyValue, PbLeaseGrantResponse, PbLeaseKeepAliveResponse,
    PbLeaseLeasesResponse, PbLeaseTimeToLiveResponse, PbMemberAddResponse, PbPutResponse,
    PbRangeResponse, PbResponseHeader, PbTxnOpResponse, PbTxnResponse, PbWatchResponse,
};

use super::{EpHealth, Printer};
use crate::gofmt::{hex_escaped, lease_id, quote};

fn kv(p: &Printer, w: &mut dyn Write, kv: &PbKeyValue) -> io::Result<()> {
    let (key, value) = if p.hex {
        (hex_escaped(&kv.key), hex_escaped(&kv.value))
    } else {
        (kv.key.clone(), kv.value.clone())
    };
    if !p.value_only {
        w.write_all(&key)?;
        w.write_all(b"\n")?;
    }
    w.write_all(&value)?;
    w.write_all(b"\n")
}

pub fn put(p: &Printer, w: &mut dyn Write, r: &PbPutResponse) -> io::Result<()> {
    writeln!(w, "OK")?;
    if let Some(prev) = &r.prev_kv {
        kv(p, w, prev)?;
    }
    Ok(())
}

pub fn get(p: &Printer, w: &mut dyn Write, r: &PbRangeResponse) -> io::Result<()> {
    for item in &r.kvs {
        kv(p, w, item)?;
    }
    Ok(())
}

pub fn del(p: &Printer, w: &mut dyn Write, r: &PbDeleteResponse) -> io::Result<()> {
    writeln!(w, "{}", r.deleted)?;
    for prev in &r.prev_kvs {
        kv(p, w, prev)?;
    }
    Ok(())
}

pub fn txn(p: &Printer, w: &mut dyn Write, r: &PbTxnResponse) -> io::Result<()> {
    writeln!(w, "{}", if r.succeeded { "SUCCESS" } else { "FAILURE" })?;
    for op in &r.responses {
        writeln!(w)?;
        match &op.response {
            Some(PbTxnOpResponse::ResponsePut(r)) => put(p, w, r)?,
            Some(PbTxnOpResponse::ResponseRange(r)) => get(p, w, r)?,
            Some(PbTxnOpResponse::ResponseDeleteRange(r)) => del(p, w, r)?,
            other => writeln!(w, "unexpected response {other:?}")?,
        }
    }
    Ok(())
}

/// Each event's type, then its previous key-value if asked for, then its
/// key-value.
pub fn watch(p: &Printer, w: &mut dyn Write, r: &PbWatchResponse) -> io::Result<()> {
    for ev in &r.events {
        writeln!(w, "{}", super::event_type(ev.r#type))?;
        if let Some(prev) = &ev.prev_kv {
            kv(p, w, prev)?;
        }
        kv(p, w, &ev.kv.clone().unwrap_or_default())?;
    }
    Ok(())
}

pub fn lease_grant(w: &mut dyn Write, r: &PbLeaseGrantResponse) -> io::Result<()> {
    writeln!(w, "lease {} granted with TTL({}s)", lease_id(r.id), r.ttl)
}

/// etcdctl names the lease it was asked to revoke; the response has no id.
pub fn lease_revoke(w: &mut dyn Write, id: i64) -> io::Result<()> {
    writeln!(w, "lease {} revoked", lease_id(id))
}

pub fn lease_keep_alive(w: &mut dyn Write, r: &PbLeaseKeepAliveResponse) -> io::Result<()> {
    writeln!(w, "lease {} keepalived with TTL({})", lease_id(r.id), r.ttl)
}

/// The end of `lease keep-alive` once the server no longer knows the lease.
pub fn lease_keep_alive_end(w: &mut dyn Write, id: i64) -> io::Result<()> {
    writeln!(w, "lease {} expired or revoked.", lease_id(id))
}

pub fn lease_time_to_live(
    w: &mut dyn Write,
    r: &PbLeaseTimeToLiveResponse,
    keys: bool,
) -> io::Result<()> {
    if r.granted_ttl == 0 && r.ttl == -1 {
        return writeln!(w, "lease {} already expired", lease_id(r.id));
    }
    write!(w, "lease {} granted with TTL({}s), remaining({}s)", lease_id(r.id), r.granted_ttl, r.ttl)?;
    if keys {
        // Go's %v of a []string: the raw bytes, space separated.
        w.write_all(b", attached keys([")?;
        w.write_all(&r.keys.join(&b' '))?;
        w.write_all(b"])")?;
    }
    writeln!(w)
}

pub fn lease_leases(w: &mut dyn Write, r: &PbLeaseLeasesResponse) -> io::Result<()> {
    writeln!(w, "found {} leases", r.leases.len())?;
    for lease in &r.leases {
        writeln!(w, "{}", lease_id(lease.id))?;
    }
    Ok(())
}

/// Member ids as Go's `%16x`: hex, padded on the left with spaces.
pub fn member_add(w: &mut dyn Write, r: &PbMemberAddResponse) -> io::Result<()> {
    let id = r.member.as_ref().map_or(0, |m| m.id);
    let cluster = r.header.as_ref().map_or(0, |h| h.cluster_id);
    writeln!(w, "Member {id:16x} added to cluster {cluster:16x}")
}

/// The lines a new member's configuration can be sourced from, each value
/// quoted as Go's `%q` does.
pub fn member_add_env(
    w: &mut dyn Write,
    name: &str,
    initial_cluster: &[String],
    peer_urls: &str,
) -> io::Result<()> {
    writeln!(w)?;
    writeln!(w, "ETCD_NAME={}", quote(name.as_bytes()))?;
    writeln!(w, "ETCD_INITIAL_CLUSTER={}", quote(initial_cluster.join(",").as_bytes()))?;
    writeln!(w, "ETCD_INITIAL_ADVERTISE_PEER_URLS={}", quote(peer_urls.as_bytes()))?;
    writeln!(w, "ETCD_INITIAL_CLUSTER_STATE=\"existing\"")
}

/// `Member <id> removed from|updated in|promoted in cluster <id>`.
pub fn member_changed(
    w: &mut dyn Write,
    id: u64,
    how: &str,
    header: Option<&PbResponseHeader>,
) -> io::Result<()> {
    let cluster = header.map_or(0, |h| h.cluster_id);
    writeln!(w, "Member {id:16x} {how} cluster {cluster:16x}")
}

/// Member ids as pkg/types' `ID.String()`: hex without padding.
pub fn move_leader(w: &mut dyn Write, leader: u64, target: u64) -> io::Result<()> {
    writeln!(w, "Leadership transferred from {leader:x} to {target:x}")
}

/// A table's rows, one line each, cells joined by ", ".
pub fn rows(w: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    for row in rows {
        writeln!(w, "{}", row.join(", "))?;
    }
    Ok(())
}

pub fn endpoint_health(w: &mut dyn Write, list: &[EpHealth]) -> io::Result<()> {
    for h in list {
        if h.error.is_empty() {
            writeln!(w, "{} is healthy: successfully committed proposal: took = {}", h.endpoint, h.took)?;
        } else {
            writeln!(w, "{} is unhealthy: failed to commit proposal: {}", h.endpoint, h.error)?;
        }
    }
    Ok(())
}
