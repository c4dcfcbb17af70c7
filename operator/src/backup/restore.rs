//! `spec.bootstrap.restore` resolved, pure: the snapshot a new cluster's
//! founding member is restored from (its URL and store), or why not yet, or
//! why never. Resolved once, when the cluster is created, and recorded in
//! status (`restoredFrom`): the pod template must not change when the
//! backup it came from is later pruned.

use super::crd::{BackupPhase, KvBackup};
use super::job::object_url;
use crate::crd::{KvCluster, RestoreStatus};
use crate::resources::RestoreFrom;

#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// Restore from this snapshot.
    Ready(Box<RestoreFrom>),
    /// Not yet (the backup is still running, say): look again.
    Wait(String),
    /// Never: a person must change something.
    Refuse(String),
}

/// `None` when the cluster is not restored. `backup` is the `KvBackup` the
/// restore names, if it names one and it exists; `founding_claim` whether
/// the founding member's volume already exists.
pub fn resolve(kvc: &KvCluster, backup: Option<&KvBackup>, founding_claim: bool) -> Option<Resolved> {
    let spec = kvc.spec.bootstrap.as_ref()?.restore.as_ref()?;
    let status = kvc.status.as_ref();
    if let Some(r) = status.and_then(|s| s.restored_from.as_ref()) {
        return Some(Resolved::Ready(Box::new(RestoreFrom { url: r.location.clone(), destination: r.destination.clone() })));
    }
    if status.is_some_and(|s| s.cluster_id.is_some()) {
        return Some(Resolved::Refuse("the cluster already exists: a restore makes a new KvCluster".to_owned()));
    }
    if founding_claim {
        return Some(Resolved::Refuse(
            "the founding member's volume exists from before this cluster: delete it, or restore into a KvCluster of another name".to_owned(),
        ));
    }
    if let Some(r) = &spec.backup {
        let Some(b) = backup else {
            return Some(Resolved::Wait(format!("KvBackup {:?} not found", r.name)));
        };
        let st = b.status.clone().unwrap_or_default();
        return Some(match (st.phase, st.location) {
            (BackupPhase::Completed, Some(url)) => Resolved::Ready(Box::new(RestoreFrom { url, destination: b.spec.destination.clone() })),
            (BackupPhase::Failed, _) => Resolved::Refuse(format!("KvBackup {:?} failed: {}", r.name, st.error.unwrap_or_default())),
            _ => Resolved::Wait(format!("KvBackup {:?} is not complete yet", r.name)),
        });
    }
    let source = spec.source.as_ref()?;
    let key = source.key.trim_start_matches('/');
    let url = object_url(&source.destination, |prefix| match prefix.map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("{p}/{key}"),
        _ => key.to_owned(),
    });
    Some(match url {
        Some(url) => Resolved::Ready(Box::new(RestoreFrom { url, destination: source.destination.clone() })),
        None => Resolved::Refuse("the restore's source names no store".to_owned()),
    })
}

/// What status records of a resolved restore.
pub fn recorded(from: &RestoreFrom) -> RestoreStatus {
    RestoreStatus { location: from.url.clone(), destination: from.destination.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::crd::{Destination, KvBackupSpec, KvBackupStatus, S3};
    use crate::crd::{BackupRef, BootstrapSpec, KvClusterStatus, RestoreSource, RestoreSpec};

    fn s3(prefix: Option<&str>) -> Destination {
        Destination { s3: Some(S3 { bucket: "b".into(), prefix: prefix.map(Into::into), ..S3::default() }), ..Destination::default() }
    }

    fn cluster(restore: Option<RestoreSpec>) -> KvCluster {
        let mut kvc = crate::resources::tests::kvcluster("demo", 3);
        kvc.spec.bootstrap = restore.map(|r| BootstrapSpec { restore: Some(r) });
        kvc
    }

    fn by_backup() -> KvCluster {
        cluster(Some(RestoreSpec { backup: Some(BackupRef { name: "nightly-1".into() }), source: None }))
    }

    fn backup(phase: BackupPhase) -> KvBackup {
        let mut b = KvBackup::new("nightly-1", KvBackupSpec { cluster: "old".into(), destination: s3(Some("prod")), reclaim_policy: Default::default() });
        b.status = Some(KvBackupStatus {
            phase,
            location: (phase == BackupPhase::Completed).then(|| "s3://b/prod/ns/old/nightly-1.snap".to_owned()),
            error: (phase == BackupPhase::Failed).then(|| "NoSuchBucket".to_owned()),
            ..KvBackupStatus::default()
        });
        b
    }

    #[test]
    fn a_cluster_without_a_restore_resolves_to_nothing() {
        assert_eq!(resolve(&cluster(None), None, false), None);
    }

    #[test]
    fn a_backup_resolves_once_complete_and_a_failed_one_never() {
        let kvc = by_backup();
        assert_eq!(resolve(&kvc, None, false), Some(Resolved::Wait("KvBackup \"nightly-1\" not found".into())));
        assert_eq!(
            resolve(&kvc, Some(&backup(BackupPhase::Running)), false),
            Some(Resolved::Wait("KvBackup \"nightly-1\" is not complete yet".into()))
        );
        assert_eq!(
            resolve(&kvc, Some(&backup(BackupPhase::Failed)), false),
            Some(Resolved::Refuse("KvBackup \"nightly-1\" failed: NoSuchBucket".into()))
        );
        assert_eq!(
            resolve(&kvc, Some(&backup(BackupPhase::Completed)), false),
            Some(Resolved::Ready(Box::new(RestoreFrom { url: "s3://b/prod/ns/old/nightly-1.snap".into(), destination: s3(Some("prod")) })))
        );
    }

    #[test]
    fn a_source_names_its_object_after_the_prefix() {
        let kvc = cluster(Some(RestoreSpec {
            backup: None,
            source: Some(RestoreSource { destination: s3(Some("/etcd/")), key: "/migration/etcd.db".into() }),
        }));
        match resolve(&kvc, None, false) {
            Some(Resolved::Ready(from)) => assert_eq!(from.url, "s3://b/etcd/migration/etcd.db"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_existing_cluster_or_volume_is_never_restored_into_and_a_recorded_restore_stays() {
        let mut kvc = by_backup();
        kvc.status = Some(KvClusterStatus { cluster_id: Some("c1".into()), ..KvClusterStatus::default() });
        assert!(matches!(resolve(&kvc, Some(&backup(BackupPhase::Completed)), false), Some(Resolved::Refuse(_))));
        assert!(matches!(resolve(&by_backup(), Some(&backup(BackupPhase::Completed)), true), Some(Resolved::Refuse(_))));
        // Once recorded, the backup may go (pruned) and the cluster exist.
        let from = RestoreFrom { url: "s3://b/k".into(), destination: s3(None) };
        kvc.status = Some(KvClusterStatus { cluster_id: Some("c1".into()), restored_from: Some(recorded(&from)), ..KvClusterStatus::default() });
        assert_eq!(resolve(&kvc, None, true), Some(Resolved::Ready(Box::new(from))));
    }
}
