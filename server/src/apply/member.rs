//! Membership, as etcd applies it: conf changes add a member (voter or
//! learner), promote a learner or remove a member; a member's published
//! name and client URLs, and peer URL updates, are plain requests.

use raft::eraftpb::{ConfChangeType, ConfChangeV2};

use crate::error::{Error, Result};
use crate::membership::{Member, Membership};
use crate::storage::WriteBatch;

/// Records the effect of an accepted conf change in the registry.
pub fn conf_change(reg: &Membership, cc: &ConfChangeV2, member: Option<Member>, batch: &mut WriteBatch) {
    for change in cc.get_changes() {
        let id = change.node_id;
        match change.get_change_type() {
            ConfChangeType::AddNode => {
                // A voter: a promoted learner keeps what it published.
                let mut m = reg.get(id).or_else(|| member.clone().filter(|m| m.id == id)).unwrap_or(Member { id, ..Default::default() });
                m.is_learner = false;
                reg.put(m, batch);
            }
            ConfChangeType::AddLearnerNode => {
                let mut m = member.clone().filter(|m| m.id == id).unwrap_or(Member { id, ..Default::default() });
                m.is_learner = true;
                reg.put(m, batch);
            }
            ConfChangeType::RemoveNode => reg.remove(id, batch),
        }
    }
}

/// A started member's name and client URLs.
pub fn attributes(reg: &Membership, published: Member, batch: &mut WriteBatch) -> Result<Vec<Member>> {
    let mut m = reg.get(published.id).ok_or(Error::MemberNotFound)?;
    m.name = published.name;
    m.client_urls = published.client_urls;
    reg.put(m, batch);
    Ok(reg.list())
}

/// New peer URLs for a member (MemberUpdate).
pub fn peer_urls(reg: &Membership, update: Member, batch: &mut WriteBatch) -> Result<Vec<Member>> {
    let mut m = reg.get(update.id).ok_or(Error::MemberNotFound)?;
    if let Some(other) = reg.by_peer_url(&update.peer_urls)
        && other.id != update.id
    {
        return Err(Error::PeerUrlExists);
    }
    m.peer_urls = update.peer_urls;
    reg.put(m, batch);
    Ok(reg.list())
}
