//! Output formats of etcdctl 3.4: `simple`, `json`, `fields`, `table` and
//! `protobuf`, byte for byte.
//!
//! A printer only formats responses it is given into the writers it is
//! handed; it never talks to a server. Each format lives in its own file;
//! this one picks the format and says which format cannot print what.

mod fields;
pub(crate) mod json;
mod simple;
pub mod table;

use std::io::Write;

use etcd_client::proto::{
    PbDeleteResponse, PbHashKvResponse, PbLeaseGrantResponse, PbLeaseKeepAliveResponse,
    PbLeaseLeasesResponse, PbLeaseRevokeResponse, PbLeaseTimeToLiveResponse, PbMemberAddResponse,
    PbMemberListResponse, PbMemberPromoteResponse, PbMemberRemoveResponse, PbMemberUpdateResponse,
    PbMoveLeaderResponse, PbPutResponse, PbRangeResponse, PbResponseHeader, PbStatusResponse,
    PbTxnResponse, PbWatchResponse,
};
use prost::Message;

use crate::error::{CtlError, ExitCode};

/// `-w/--write-out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Simple,
    Json,
    Table,
    Fields,
    Protobuf,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, CtlError> {
        match s {
            "simple" => Ok(Format::Simple),
            "json" => Ok(Format::Json),
            "table" => Ok(Format::Table),
            "fields" => Ok(Format::Fields),
            "protobuf" => Ok(Format::Protobuf),
            _ => Err(CtlError::bad_feature("unsupported output format")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Simple => "simple",
            Format::Json => "json",
            Format::Table => "table",
            Format::Fields => "fields",
            Format::Protobuf => "protobuf",
        }
    }

    fn unsupported(self) -> CtlError {
        CtlError::bad_feature(format!("{} not supported as output format", self.name()))
    }
}

/// What etcdctl 3.4 does when a format lacks a method altogether: its
/// printers embed a nil `printer` interface, and calling through it panics.
fn nil_printer_panic() -> CtlError {
    CtlError::new(ExitCode::Panic, "runtime error: invalid memory address or nil pointer dereference")
}

/// One endpoint's answer to `endpoint status`.
#[derive(Debug, Clone)]
pub struct EpStatus {
    pub endpoint: String,
    pub status: PbStatusResponse,
}

/// One endpoint's answer to `endpoint hashkv`.
#[derive(Debug, Clone)]
pub struct EpHashKv {
    pub endpoint: String,
    pub hash_kv: PbHashKvResponse,
}

/// One endpoint's answer to `endpoint health`; `took` is already in Go's
/// duration form, `error` empty when healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpHealth {
    pub endpoint: String,
    pub health: bool,
    pub took: String,
    pub error: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
    /// `--hex`: keys and values as `\xNN` in the simple format.
    pub hex: bool,
    /// `--print-value-only`.
    pub value_only: bool,
}

type Out<'a> = &'a mut dyn Write;

impl Printer {
    pub fn new(format: Format, hex: bool) -> Self {
        Printer { format, hex, value_only: false }
    }

    pub fn put(&self, w: Out<'_>, r: &PbPutResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::put(self, w, r)?,
            Format::Json => json::print(w, json::put(r))?,
            Format::Fields => fields::put(w, r)?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn get(&self, w: Out<'_>, r: &PbRangeResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::get(self, w, r)?,
            Format::Json => json::print(w, json::range(r))?,
            Format::Fields => fields::get(w, r)?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn del(&self, w: Out<'_>, r: &PbDeleteResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::del(self, w, r)?,
            Format::Json => json::print(w, json::delete(r))?,
            Format::Fields => fields::del(w, r)?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn txn(&self, w: Out<'_>, r: &PbTxnResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::txn(self, w, r)?,
            Format::Json => json::print(w, json::txn(r))?,
            Format::Fields => fields::txn(w, r)?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn lease_grant(&self, w: Out<'_>, r: &PbLeaseGrantResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_grant(w, r)?,
            Format::Json => json::print(w, json::lease_grant(r))?,
            Format::Fields => fields::lease_grant(w, r)?,
            Format::Protobuf => embedded_header_pb(w, r.header.as_ref())?,
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// `id` is the lease asked for: the simple format names it.
    pub fn lease_revoke(
        &self,
        w: Out<'_>,
        id: i64,
        r: &PbLeaseRevokeResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_revoke(w, id)?,
            Format::Json => json::print(w, json::lease_revoke(r))?,
            Format::Fields => fields::lease_revoke(w, r)?,
            // clientv3's revoke response is a named copy of the protobuf
            // type, without its methods: etcdctl cannot marshal it.
            Format::Protobuf => {
                let value = match &r.header {
                    Some(h) => header_text(h),
                    None => "<nil>".to_string(),
                };
                return Err(CtlError::bad_feature(format!(
                    "marshal unsupported for type clientv3.LeaseRevokeResponse ({{{value}}})"
                )));
            }
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn lease_keep_alive(
        &self,
        w: Out<'_>,
        r: &PbLeaseKeepAliveResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_keep_alive(w, r)?,
            Format::Json => json::print(w, json::lease_keep_alive(r))?,
            Format::Fields => fields::lease_keep_alive(w, r)?,
            Format::Protobuf => embedded_header_pb(w, r.header.as_ref())?,
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// What `lease keep-alive` prints when the lease is gone: only the
    /// simple format says anything.
    pub fn lease_keep_alive_end(&self, w: Out<'_>, id: i64) -> Result<(), CtlError> {
        if self.format == Format::Simple {
            simple::lease_keep_alive_end(w, id)?;
        }
        Ok(())
    }

    pub fn lease_time_to_live(
        &self,
        w: Out<'_>,
        r: &PbLeaseTimeToLiveResponse,
        keys: bool,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_time_to_live(w, r, keys)?,
            Format::Json => json::print(w, json::lease_time_to_live(r))?,
            Format::Fields => fields::lease_time_to_live(w, r)?,
            Format::Protobuf => embedded_header_pb(w, r.header.as_ref())?,
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn lease_leases(&self, w: Out<'_>, r: &PbLeaseLeasesResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::lease_leases(w, r)?,
            Format::Json => json::print(w, json::lease_leases(r))?,
            Format::Fields => fields::lease_leases(w, r)?,
            Format::Protobuf => embedded_header_pb(w, r.header.as_ref())?,
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// One response of a watch, as clientv3 hands it to etcdctl.
    pub fn watch(&self, w: Out<'_>, r: &PbWatchResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::watch(self, w, r)?,
            Format::Json => json::print(w, json::watch(r))?,
            Format::Fields => fields::watch(w, r)?,
            // etcdctl rebuilds the protobuf response from clientv3's copy,
            // which keeps neither the watch id nor the cancel reason.
            Format::Protobuf => {
                let copy = PbWatchResponse {
                    header: Some(r.header.unwrap_or_default()),
                    events: r.events.clone(),
                    compact_revision: r.compact_revision,
                    canceled: r.canceled,
                    created: r.created,
                    ..Default::default()
                };
                w.write_all(&copy.encode_to_vec())?;
            }
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn member_list(&self, w: Out<'_>, r: &PbMemberListResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::rows(w, &table::member_list(r).1)?,
            Format::Json => json::print(w, json::member_list(r))?,
            Format::Fields => fields::member_list(w, r)?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Table => {
                let (header, rows) = table::member_list(r);
                table::render(w, &header, &rows)?;
            }
        }
        Ok(())
    }

    /// The new member's line; the `ETCD_*` lines that follow it in the
    /// simple format are `member_add_env`'s.
    pub fn member_add(&self, w: Out<'_>, r: &PbMemberAddResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::member_add(w, r)?,
            Format::Json => json::print(w, json::member_add(r))?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Fields | Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// The settings a new member starts with, printed by etcdctl's `member
    /// add` in the simple format only. `initial_cluster` is `name=peer-url`
    /// for every peer URL of every member.
    pub fn member_add_env(
        &self,
        w: Out<'_>,
        name: &str,
        initial_cluster: &[String],
        peer_urls: &str,
    ) -> Result<(), CtlError> {
        if self.format == Format::Simple {
            simple::member_add_env(w, name, initial_cluster, peer_urls)?;
        }
        Ok(())
    }

    /// `id` is the member asked for: the simple format names it.
    pub fn member_remove(
        &self,
        w: Out<'_>,
        id: u64,
        r: &PbMemberRemoveResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::member_changed(w, id, "removed from", r.header.as_ref())?,
            Format::Json => json::print(w, json::members_changed(&r.header, &r.members))?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Fields | Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn member_update(
        &self,
        w: Out<'_>,
        id: u64,
        r: &PbMemberUpdateResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::member_changed(w, id, "updated in", r.header.as_ref())?,
            Format::Json => json::print(w, json::members_changed(&r.header, &r.members))?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Fields | Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// Only the simple format has a `MemberPromote` method in etcdctl 3.4;
    /// every other format panics, after the promotion took place.
    pub fn member_promote(
        &self,
        w: Out<'_>,
        id: u64,
        r: &PbMemberPromoteResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::member_changed(w, id, "promoted in", r.header.as_ref())?,
            _ => return Err(nil_printer_panic()),
        }
        Ok(())
    }

    pub fn endpoint_status(&self, w: Out<'_>, list: &[EpStatus]) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::rows(w, &table::endpoint_status(list).1)?,
            Format::Json => json::print(w, json::endpoint_status(list))?,
            Format::Fields => fields::endpoint_status(w, list)?,
            Format::Protobuf => return Err(self.format.unsupported()),
            Format::Table => {
                let (header, rows) = table::endpoint_status(list);
                table::render(w, &header, &rows)?;
            }
        }
        Ok(())
    }

    pub fn endpoint_hashkv(&self, w: Out<'_>, list: &[EpHashKv]) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::rows(w, &table::endpoint_hashkv(list).1)?,
            Format::Json => json::print(w, json::endpoint_hashkv(list))?,
            Format::Fields => fields::endpoint_hashkv(w, list)?,
            Format::Protobuf => return Err(self.format.unsupported()),
            Format::Table => {
                let (header, rows) = table::endpoint_hashkv(list);
                table::render(w, &header, &rows)?;
            }
        }
        Ok(())
    }

    /// `leader` is the member that handed over, `target` the one asked for.
    pub fn move_leader(
        &self,
        w: Out<'_>,
        leader: u64,
        target: u64,
        r: &PbMoveLeaderResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::move_leader(w, leader, target)?,
            Format::Json => json::print(w, json::move_leader(r))?,
            Format::Protobuf => w.write_all(&r.encode_to_vec())?,
            Format::Fields | Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// The simple format reports health on stderr, as etcdctl does.
    pub fn endpoint_health(
        &self,
        w: Out<'_>,
        err: Out<'_>,
        list: &[EpHealth],
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => simple::endpoint_health(err, list)?,
            Format::Json => json::print(w, json::endpoint_health(list))?,
            Format::Fields => fields::endpoint_health(w, list)?,
            Format::Protobuf => return Err(self.format.unsupported()),
            Format::Table => {
                let (header, rows) = table::endpoint_health(list);
                table::render(w, &header, &rows)?;
            }
        }
        Ok(())
    }
}

/// mvccpb's `Event_EventType` names.
fn event_type(t: i32) -> String {
    match t {
        0 => "PUT".to_string(),
        1 => "DELETE".to_string(),
        other => other.to_string(),
    }
}

/// clientv3's grant, keep-alive, time-to-live and list responses embed
/// `*pb.ResponseHeader`, whose `Marshal` method they inherit: etcdctl's
/// protobuf format prints the header alone.
fn embedded_header_pb(w: Out<'_>, h: Option<&PbResponseHeader>) -> std::io::Result<()> {
    w.write_all(&h.map(Message::encode_to_vec).unwrap_or_default())
}

/// gogo-protobuf's compact text of a header, as Go's `%v` shows it:
/// `name:value ` for each non-zero field.
fn header_text(h: &PbResponseHeader) -> String {
    let fields: [(&str, i128); 4] = [
        ("cluster_id", h.cluster_id.into()),
        ("member_id", h.member_id.into()),
        ("revision", h.revision.into()),
        ("raft_term", h.raft_term.into()),
    ];
    fields
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|(name, v)| format!("{name}:{v} "))
        .collect()
}

#[cfg(test)]
mod tests;
