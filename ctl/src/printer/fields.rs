//! The `fields` format: one `"Name" : value` line per field, as etcdctl
//! 3.4 prints them (it ignores `--hex` here).

use std::io::{self, Write};

use etcd_client::proto::{
    PbDeleteResponse, PbKeyValue, PbLeaseGrantResponse, PbLeaseKeepAliveResponse,
    PbLeaseLeasesResponse, PbLeaseRevokeResponse, PbLeaseTimeToLiveResponse, PbMemberListResponse,
    PbPutResponse, PbRangeResponse, PbResponseHeader, PbTxnOpResponse, PbTxnResponse, PbWatchResponse,
};

use super::{EpHashKv, EpHealth, EpStatus};
use crate::gofmt::quote;

fn header(w: &mut dyn Write, h: Option<&PbResponseHeader>) -> io::Result<()> {
    let h = h.cloned().unwrap_or_default();
    writeln!(w, "\"ClusterID\" : {}", h.cluster_id)?;
    writeln!(w, "\"MemberID\" : {}", h.member_id)?;
    writeln!(w, "\"Revision\" : {}", h.revision)?;
    writeln!(w, "\"RaftTerm\" : {}", h.raft_term)
}

fn kv(w: &mut dyn Write, prefix: &str, kv: &PbKeyValue) -> io::Result<()> {
    writeln!(w, "\"{prefix}Key\" : {}", quote(&kv.key))?;
    writeln!(w, "\"{prefix}CreateRevision\" : {}", kv.create_revision)?;
    writeln!(w, "\"{prefix}ModRevision\" : {}", kv.mod_revision)?;
    writeln!(w, "\"{prefix}Version\" : {}", kv.version)?;
    writeln!(w, "\"{prefix}Value\" : {}", quote(&kv.value))?;
    writeln!(w, "\"{prefix}Lease\" : {}", kv.lease)
}

pub fn put(w: &mut dyn Write, r: &PbPutResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    if let Some(prev) = &r.prev_kv {
        kv(w, "Prev", prev)?;
    }
    Ok(())
}

pub fn get(w: &mut dyn Write, r: &PbRangeResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    for item in &r.kvs {
        kv(w, "", item)?;
    }
    writeln!(w, "\"More\" : {}", r.more)?;
    writeln!(w, "\"Count\" : {}", r.count)
}

pub fn del(w: &mut dyn Write, r: &PbDeleteResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    writeln!(w, "\"Deleted\" : {}", r.deleted)?;
    for prev in &r.prev_kvs {
        kv(w, "Prev", prev)?;
    }
    Ok(())
}

pub fn txn(w: &mut dyn Write, r: &PbTxnResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    writeln!(w, "\"Succeeded\" : {}", r.succeeded)?;
    for op in &r.responses {
        match &op.response {
            Some(PbTxnOpResponse::ResponsePut(r)) => put(w, r)?,
            Some(PbTxnOpResponse::ResponseRange(r)) => get(w, r)?,
            Some(PbTxnOpResponse::ResponseDeleteRange(r)) => del(w, r)?,
            other => writeln!(w, "\"Unknown\" : {}", quote(format!("{other:?}").as_bytes()))?,
        }
    }
    Ok(())
}

pub fn watch(w: &mut dyn Write, r: &PbWatchResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    for ev in &r.events {
        writeln!(w, "\"Type\" : {}", super::event_type(ev.r#type))?;
        if let Some(prev) = &ev.prev_kv {
            kv(w, "Prev", prev)?;
        }
        kv(w, "", &ev.kv.clone().unwrap_or_default())?;
    }
    Ok(())
}

pub fn lease_grant(w: &mut dyn Write, r: &PbLeaseGrantResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    writeln!(w, "\"ID\" : {}", r.id)?;
    writeln!(w, "\"TTL\" : {}", r.ttl)
}

pub fn lease_revoke(w: &mut dyn Write, r: &PbLeaseRevokeResponse) -> io::Result<()> {
    header(w, r.header.as_ref())
}

pub fn lease_keep_alive(w: &mut dyn Write, r: &PbLeaseKeepAliveResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    writeln!(w, "\"ID\" : {}", r.id)?;
    writeln!(w, "\"TTL\" : {}", r.ttl)
}

pub fn lease_time_to_live(w: &mut dyn Write, r: &PbLeaseTimeToLiveResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    writeln!(w, "\"ID\" : {}", r.id)?;
    writeln!(w, "\"TTL\" : {}", r.ttl)?;
    writeln!(w, "\"GrantedTTL\" : {}", r.granted_ttl)?;
    for key in &r.keys {
        writeln!(w, "\"Key\" : {}", quote(key))?;
    }
    Ok(())
}

pub fn lease_leases(w: &mut dyn Write, r: &PbLeaseLeasesResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    for lease in &r.leases {
        writeln!(w, "\"ID\" : {}", lease.id)?;
    }
    Ok(())
}

pub fn member_list(w: &mut dyn Write, r: &PbMemberListResponse) -> io::Result<()> {
    header(w, r.header.as_ref())?;
    for m in &r.members {
        writeln!(w, "\"ID\" : {}", m.id)?;
        writeln!(w, "\"Name\" : {}", quote(m.name.as_bytes()))?;
        for url in &m.peer_ur_ls {
            writeln!(w, "\"PeerURL\" : {}", quote(url.as_bytes()))?;
        }
        for url in &m.client_ur_ls {
            writeln!(w, "\"ClientURL\" : {}", quote(url.as_bytes()))?;
        }
        writeln!(w, "\"IsLearner\" : {}", m.is_learner)?;
        writeln!(w)?;
    }
    Ok(())
}

pub fn endpoint_status(w: &mut dyn Write, list: &[EpStatus]) -> io::Result<()> {
    for ep in list {
        let s = &ep.status;
        header(w, s.header.as_ref())?;
        writeln!(w, "\"Version\" : {}", quote(s.version.as_bytes()))?;
        writeln!(w, "\"DBSize\" : {}", s.db_size)?;
        writeln!(w, "\"Leader\" : {}", s.leader)?;
        writeln!(w, "\"IsLearner\" : {}", s.is_learner)?;
        writeln!(w, "\"RaftIndex\" : {}", s.raft_index)?;
        writeln!(w, "\"RaftTerm\" : {}", s.raft_term)?;
        writeln!(w, "\"RaftAppliedIndex\" : {}", s.raft_applied_index)?;
        // Go's %v of a []string.
        writeln!(w, "\"Errors\" : [{}]", s.errors.join(" "))?;
        writeln!(w, "\"Endpoint\" : {}", quote(ep.endpoint.as_bytes()))?;
        writeln!(w)?;
    }
    Ok(())
}

/// Neither the compacted revision nor anything after the hash is printed.
pub fn endpoint_hashkv(w: &mut dyn Write, list: &[EpHashKv]) -> io::Result<()> {
    for h in list {
        header(w, h.hash_kv.header.as_ref())?;
        writeln!(w, "\"Endpoint\" : {}", quote(h.endpoint.as_bytes()))?;
        writeln!(w, "\"Hash\" : {}", h.hash_kv.hash)?;
        writeln!(w)?;
    }
    Ok(())
}

pub fn endpoint_health(w: &mut dyn Write, list: &[EpHealth]) -> io::Result<()> {
    for h in list {
        writeln!(w, "\"Endpoint\" : {}", quote(h.endpoint.as_bytes()))?;
        writeln!(w, "\"Health\" : {}", h.health)?;
        writeln!(w, "\"Took\" : {}", h.took)?;
        writeln!(w, "\"Error\" : {}", h.error)?;
        writeln!(w)?;
    }
    Ok(())
}
