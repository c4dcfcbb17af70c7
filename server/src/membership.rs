//! The member registry, as etcd's `membership.RaftCluster`: every member's
//! id, name, peer and client URLs and learner flag, replicated through raft
//! (conf changes and member updates are applied here) and persisted in the
//! meta column family with the state they belong to, so a raft snapshot
//! carries it to a new member.

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::RwLock;
use prost::Message;

use crate::storage::{Cf, Engine, StorageError, WriteBatch};

const MEMBER_PREFIX: &[u8] = b"members/";
const REMOVED_PREFIX: &[u8] = b"removed/";

/// One member, as the registry keeps it and the peer service sends it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Member {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Empty until the member has started and published its name.
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    /// Empty until the member has started and published them.
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

impl Member {
    pub fn to_pb(&self) -> etcd_client::proto::PbMember {
        etcd_client::proto::PbMember {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: self.is_learner,
        }
    }
}

fn key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn corrupt(detail: impl ToString) -> StorageError {
    StorageError::Corrupt { path: "member registry".into(), detail: detail.to_string() }
}

#[derive(Default)]
struct Inner {
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
}

/// The registry: an in-memory copy of what the meta column family holds.
#[derive(Default)]
pub struct Membership {
    inner: RwLock<Inner>,
    /// Bumped on every change, so readers can cache what they derive.
    version: std::sync::atomic::AtomicU64,
}

impl Membership {
    /// (Re)loads the registry from the engine (at start and after a raft
    /// snapshot replaced the state).
    pub fn load(&self, engine: &dyn Engine) -> Result<(), StorageError> {
        let mut members = BTreeMap::new();
        let mut failure = None;
        engine.scan(Cf::Meta, MEMBER_PREFIX, Some(&prefix_end(MEMBER_PREFIX)), &mut |_, v| match Member::decode(v) {
            Ok(m) => {
                members.insert(m.id, m);
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        })?;
        if let Some(e) = failure {
            return Err(corrupt(e));
        }
        let mut removed = BTreeSet::new();
        engine.scan(Cf::Meta, REMOVED_PREFIX, Some(&prefix_end(REMOVED_PREFIX)), &mut |k, _| {
            if let Ok(b) = k[REMOVED_PREFIX.len()..].try_into() {
                removed.insert(u64::from_be_bytes(b));
            }
            true
        })?;
        *self.inner.write() = Inner { members, removed };
        self.changed();
        Ok(())
    }

    /// Changes whenever the registry does.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.version.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Every member, by id.
    pub fn list(&self) -> Vec<Member> {
        self.inner.read().members.values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Member> {
        self.inner.read().members.get(&id).cloned()
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.inner.read().removed.contains(&id)
    }

    /// The member, if any, that advertises one of `urls`.
    pub fn by_peer_url(&self, urls: &[String]) -> Option<Member> {
        self.inner.read().members.values().find(|m| m.peer_urls.iter().any(|u| urls.contains(u))).cloned()
    }

    /// Records `m` in `batch` and in memory (the caller writes the batch
    /// before anything can observe the registry through the API).
    pub fn put(&self, m: Member, batch: &mut WriteBatch) {
        batch.put(Cf::Meta, key(MEMBER_PREFIX, m.id), m.encode_to_vec());
        self.inner.write().members.insert(m.id, m);
        self.changed();
    }

    /// Removes a member for good: its id is never accepted again.
    pub fn remove(&self, id: u64, batch: &mut WriteBatch) {
        batch.delete(Cf::Meta, key(MEMBER_PREFIX, id));
        batch.put(Cf::Meta, key(REMOVED_PREFIX, id), Vec::new());
        let mut inner = self.inner.write();
        inner.members.remove(&id);
        inner.removed.insert(id);
        drop(inner);
        self.changed();
    }
}

/// `--initial-cluster`: `name=url,name=url,...`; a name may repeat to give
/// a member several peer URLs. Members keep their order of appearance.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {part:?} is not name=url"))?;
        let (name, url) = (name.trim(), url.trim());
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--initial-cluster: URL {url:?} of {name:?} must start with http:// or https://"));
        }
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_owned()),
            None => out.push((name.to_owned(), vec![url.to_owned()])),
        }
    }
    if out.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    let mut seen = BTreeSet::new();
    for (_, urls) in &out {
        for u in urls {
            if !seen.insert(u.clone()) {
                return Err(format!("--initial-cluster has duplicate url {u}"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;

    #[test]
    fn initial_cluster_groups_urls_by_name_and_refuses_duplicates() {
        let c = parse_initial_cluster("a=http://1:2380,b=http://2:2380,a=http://1:2381").expect("parse");
        assert_eq!(c, vec![
            ("a".to_owned(), vec!["http://1:2380".to_owned(), "http://1:2381".to_owned()]),
            ("b".to_owned(), vec!["http://2:2380".to_owned()]),
        ]);
        assert!(parse_initial_cluster("a=http://1:2380,b=http://1:2380").is_err());
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=1:2380").is_err());
    }

    #[test]
    fn the_registry_survives_a_reload_and_remembers_removed_members() {
        let engine = MemEngine::new();
        let reg = Membership::default();
        let mut b = WriteBatch::default();
        reg.put(Member { id: 1, name: "a".into(), peer_urls: vec!["http://a".into()], ..Default::default() }, &mut b);
        reg.put(Member { id: 2, name: "b".into(), peer_urls: vec!["http://b".into()], ..Default::default() }, &mut b);
        reg.remove(2, &mut b);
        engine.write(b, true).expect("write");
        let again = Membership::default();
        again.load(&engine).expect("load");
        assert_eq!(again.list().iter().map(|m| m.id).collect::<Vec<_>>(), vec![1]);
        assert!(again.is_removed(2));
        assert_eq!(again.by_peer_url(&["http://a".into()]).map(|m| m.id), Some(1));
    }
}
