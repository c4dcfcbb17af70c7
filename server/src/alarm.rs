//! Alarms, as etcd's alarm store: NOSPACE (a member's database went past
//! `--quota-backend-bytes`) and CORRUPT (members' data differ), each raised
//! for a member (CORRUPT for member 0, "unknown which"), replicated through
//! raft, persisted with the state and listed alike on every member. While
//! one is active the applier refuses what etcd's capped and corrupt appliers
//! refuse. It owns the set and its records, not the decision to raise one.

use std::collections::BTreeSet;

use etcd_client::proto::{PbAlarmMember as AlarmMember, PbAlarmRequest as AlarmRequest, PbAlarmResponse as AlarmResponse};
use parking_lot::RwLock;

use crate::storage::{Cf, Engine, StorageError, WriteBatch};

const PREFIX: &[u8] = b"alarm/";
/// etcd's AlarmType values.
pub const NONE: i32 = 0;
pub const NOSPACE: i32 = 1;
pub const CORRUPT: i32 = 2;
/// etcd's AlarmRequest actions.
pub const GET: i32 = 0;
pub const ACTIVATE: i32 = 1;
pub const DEACTIVATE: i32 = 2;

pub fn name(alarm: i32) -> &'static str {
    match alarm {
        NOSPACE => "NOSPACE",
        CORRUPT => "CORRUPT",
        _ => "NONE",
    }
}

fn key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&member.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

/// Whether a meta key is an alarm record.
pub fn is_alarm_key(k: &[u8]) -> bool {
    k.starts_with(PREFIX)
}

#[derive(Default)]
pub struct Alarms {
    /// (member id, alarm type).
    active: RwLock<BTreeSet<(u64, i32)>>,
}

impl Alarms {
    /// Reads the alarms persisted in the state (at start and after a raft
    /// snapshot replaced it).
    pub fn load(&self, engine: &dyn Engine) -> Result<(), StorageError> {
        let mut set = BTreeSet::new();
        let mut end = PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        engine.scan(Cf::Meta, PREFIX, Some(&end), &mut |k, _| {
            let rest = &k[PREFIX.len()..];
            if let (Some(m), Some(a)) = (rest.get(..8), rest.get(8..12))
                && let (Ok(m), Ok(a)) = (m.try_into(), a.try_into())
            {
                set.insert((u64::from_be_bytes(m), i32::from_be_bytes(a)));
            }
            true
        })?;
        *self.active.write() = set;
        Ok(())
    }

    pub fn has(&self, alarm: i32) -> bool {
        self.active.read().iter().any(|(_, a)| *a == alarm)
    }

    /// The active alarms of type `alarm` (NONE: all), as etcd lists them.
    pub fn list(&self, alarm: i32) -> Vec<AlarmMember> {
        self.active
            .read()
            .iter()
            .filter(|(_, a)| alarm == NONE || *a == alarm)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Applies an ACTIVATE or DEACTIVATE (GET never goes through raft), as
    /// etcd's applier: an activation answers the alarm, a deactivation the
    /// alarm it removed (none if it was not active).
    pub fn apply(&self, r: &AlarmRequest, batch: &mut WriteBatch) -> AlarmResponse {
        let mut alarms = Vec::new();
        let mut active = self.active.write();
        match r.action {
            ACTIVATE if r.alarm != NONE => {
                if active.insert((r.member_id, r.alarm)) {
                    tracing::warn!(member = %format!("{:x}", r.member_id), alarm = name(r.alarm), "alarm raised");
                }
                batch.put(Cf::Meta, key(r.member_id, r.alarm), Vec::new());
                alarms.push(AlarmMember { member_id: r.member_id, alarm: r.alarm });
            }
            DEACTIVATE if active.remove(&(r.member_id, r.alarm)) => {
                tracing::warn!(member = %format!("{:x}", r.member_id), alarm = name(r.alarm), "alarm disarmed");
                batch.delete(Cf::Meta, key(r.member_id, r.alarm));
                alarms.push(AlarmMember { member_id: r.member_id, alarm: r.alarm });
            }
            _ => {}
        }
        AlarmResponse { header: None, alarms }
    }

    /// Status's `errors`: each alarm as etcd prints an AlarmMember.
    pub fn errors(&self) -> Vec<String> {
        self.list(NONE).iter().map(|a| format!("memberID:{} alarm:{} ", a.member_id, name(a.alarm))).collect()
    }
}

/// etcd's quota cost of a request that adds data: 256 bytes of overhead
/// plus key and value per put (the larger branch of a txn), 64 per lease
/// grant; 0 for what adds nothing.
pub mod cost {
    use etcd_client::proto::{PbPutRequest as PutRequest, PbTxnOpRequest as Request, PbTxnRequest as TxnRequest, PbTxnRequestOp};

    pub const LEASE: u64 = 64;

    pub fn put(p: &PutRequest) -> u64 {
        256 + (p.key.len() + p.value.len()) as u64
    }

    pub fn txn(t: &TxnRequest) -> u64 {
        let branch = |ops: &[PbTxnRequestOp]| -> u64 {
            ops.iter()
                .map(|op| match &op.request {
                    Some(Request::RequestPut(p)) => put(p),
                    Some(Request::RequestTxn(t)) => txn(t),
                    _ => 0,
                })
                .sum()
        };
        branch(&t.success).max(branch(&t.failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;

    #[test]
    fn alarms_persist_list_and_disarm_as_etcds() {
        let engine = MemEngine::new();
        let alarms = Alarms::default();
        let mut b = WriteBatch::default();
        let raised = alarms.apply(&AlarmRequest { action: ACTIVATE, member_id: 7, alarm: NOSPACE }, &mut b);
        assert_eq!(raised.alarms, [AlarmMember { member_id: 7, alarm: NOSPACE }]);
        alarms.apply(&AlarmRequest { action: ACTIVATE, member_id: 0, alarm: CORRUPT }, &mut b);
        alarms.apply(&AlarmRequest { action: ACTIVATE, member_id: 9, alarm: NONE }, &mut b);
        engine.write(b, true).expect("write");
        let again = Alarms::default();
        again.load(&engine).expect("load");
        assert_eq!(again.list(NONE).len(), 2, "NONE is never raised");
        assert_eq!(again.list(NOSPACE), [AlarmMember { member_id: 7, alarm: NOSPACE }]);
        assert_eq!(again.errors(), ["memberID:0 alarm:CORRUPT ", "memberID:7 alarm:NOSPACE "]);
        let mut b = WriteBatch::default();
        let none = again.apply(&AlarmRequest { action: DEACTIVATE, member_id: 0, alarm: NOSPACE }, &mut b);
        assert!(none.alarms.is_empty(), "member 0 is no wildcard");
        again.apply(&AlarmRequest { action: DEACTIVATE, member_id: 7, alarm: NOSPACE }, &mut b);
        engine.write(b, true).expect("write");
        assert!(!again.has(NOSPACE) && again.has(CORRUPT));
        let reloaded = Alarms::default();
        reloaded.load(&engine).expect("load");
        assert_eq!(reloaded.list(NONE), [AlarmMember { member_id: 0, alarm: CORRUPT }]);
    }
}
