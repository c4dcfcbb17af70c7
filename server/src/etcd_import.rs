//! etcd snapshots as raftkv state: the records (`backup`'s record format)
//! of a data dir made from the bbolt file etcd's `snapshot save` writes, so
//! that `snapshot restore` can move a cluster from etcd to raftkv with its
//! keys, their revisions and versions, the compacted revision and the
//! leases. It owns the mapping of etcd's buckets to raftkv's records.
//!
//! It must not write anything itself (the caller stores the records), and
//! must not carry over what belongs to the old cluster: the restore makes a
//! new one, so etcd's members, cluster version, raft position and alarms
//! are left behind. Users, roles and whether authentication is enabled are
//! kept: etcd's `authpb` records are raftkv's (passwords stay etcd's bcrypt
//! hashes).

use etcd_client::proto::PbKeyValue as KeyValue;
use prost::Message;

use crate::backup::cf_code;
use crate::bbolt::{BoltError, Db};
use crate::lease;
use crate::mvcc::Revision;
use crate::peer::proto::Record;
use crate::storage::{Cf, StorageError};

/// raftkv's meta records of the MVCC store (as `mvcc::store` names them).
const CURRENT_REV: &[u8] = b"mvcc/current_rev";
const COMPACTED_REV: &[u8] = b"mvcc/compacted_rev";

/// etcd's bucket and key names (etcd's `mvcc/buckets`, `auth/store.go`).
const KEY_BUCKET: &[u8] = b"key";
const META_BUCKET: &[u8] = b"meta";
const LEASE_BUCKET: &[u8] = b"lease";
const AUTH_BUCKET: &[u8] = b"auth";
const SCHEDULED_COMPACT: &str = "scheduledCompactRev";
const FINISHED_COMPACT: &str = "finishedCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
const AUTH_USERS_BUCKET: &str = "authUsers";
const AUTH_ROLES_BUCKET: &str = "authRoles";

/// etcd's leasepb.Lease, the value of the `lease` bucket.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdLease {
    #[prost(int64, tag = "1")]
    pub(crate) id: i64,
    #[prost(int64, tag = "2")]
    pub(crate) ttl: i64,
    /// The remaining TTL last checkpointed; 0 when none.
    #[prost(int64, tag = "3")]
    pub(crate) remaining_ttl: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Bolt(#[from] BoltError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("not an etcd snapshot: the database has no \"key\" bucket")]
    NotEtcd,
    #[error("etcd snapshot is corrupt: bucket \"key\" holds key {0}, not a revision")]
    Revision(String),
    #[error("etcd snapshot is corrupt: the value at {rev} in bucket \"key\" is not a KeyValue: {error}")]
    KeyValue { rev: String, error: prost::DecodeError },
    #[error("etcd snapshot is corrupt: {name} in bucket \"meta\" is {value}, not a revision")]
    MetaRevision { name: &'static str, value: String },
    #[error("etcd snapshot is corrupt: lease {key} in bucket \"lease\": {what}")]
    Lease { key: String, what: String },
    #[error("etcd snapshot is corrupt: {what} {name} in bucket \"{bucket}\": {error}")]
    Auth { bucket: &'static str, what: &'static str, name: String, error: String },
}

/// What an import produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Entries of etcd's `key` bucket: revisions, not user keys.
    pub keys: u64,
    /// The revision the restored store is at.
    pub revision: i64,
    /// The compacted revision (0: never compacted).
    pub compacted: i64,
    pub leases: u64,
    pub users: u64,
    pub roles: u64,
    /// Whether the snapshot had authentication enabled (kept enabled).
    pub auth_enabled: bool,
}

/// Bytes for an error message: hex, and only the start of a long value.
fn hex(b: &[u8]) -> String {
    let mut s: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
    if b.len() > 32 {
        s.push_str(&format!("... ({} bytes)", b.len()));
    }
    s
}

/// A callback on one key/value pair that may fail.
type Entry<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), ImportError> + 'a;

/// Visits a bucket with a fallible callback; whether the bucket exists.
fn visit(db: &Db, bucket: &[u8], f: &mut Entry<'_>) -> Result<bool, ImportError> {
    let mut failure = None;
    let found = db.for_each(bucket, &mut |k, v| match f(k, v) {
        Ok(()) => true,
        Err(e) => {
            failure = Some(e);
            false
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// Emits, through `each`, the records of a raftkv data dir holding `db`'s
/// state: every revision of etcd's `key` bucket (column family kv, in
/// revision order), then the leases, the users, roles and auth settings,
/// and the MVCC store's revisions (meta). An error from `each` stops the
/// import.
pub fn import(db: &Db, each: &mut dyn FnMut(Record) -> Result<(), ImportError>) -> Result<ImportSummary, ImportError> {
    let (auth_enabled, auth_revision) = auth_settings(db)?;
    // Read before emitting anything, so that a damaged meta bucket fails
    // the import early.
    let scheduled = meta_revision(db, SCHEDULED_COMPACT)?;
    let finished = meta_revision(db, FINISHED_COMPACT)?;

    let mut summary = ImportSummary::default();
    let mut last = 0;
    let found = visit(db, KEY_BUCKET, &mut |k, v| {
        let (main, record) = kv_record(k, v)?;
        each(record)?;
        // Revisions ascend (bbolt's order, checked by the reader).
        last = main;
        summary.keys += 1;
        Ok(())
    })?;
    if !found {
        return Err(ImportError::NotEtcd);
    }

    visit(db, LEASE_BUCKET, &mut |k, v| {
        let (key, value) = lease_record(k, v)?;
        each(Record { cf: cf_code(Cf::Meta), key, value })?;
        summary.leases += 1;
        Ok(())
    })?;

    // Users and roles: etcd's authpb records are raftkv's, checked here.
    // Per kind: bucket, what it holds, the name in a record, raftkv's key.
    type NameOf = fn(&[u8]) -> Result<Vec<u8>, prost::DecodeError>;
    type Kind<'a> = (&'static str, &'static str, NameOf, fn(&[u8]) -> Vec<u8>, &'a mut u64);
    let kinds: [Kind<'_>; 2] = [
        (AUTH_USERS_BUCKET, "user", |v| crate::api::authpb::User::decode(v).map(|u| u.name), crate::auth::user_record_key, &mut summary.users),
        (AUTH_ROLES_BUCKET, "role", |v| crate::api::authpb::Role::decode(v).map(|r| r.name), crate::auth::role_record_key, &mut summary.roles),
    ];
    for (bucket, what, name_in, record_key, count) in kinds {
        visit(db, bucket.as_bytes(), &mut |k, v| {
            let name_of = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
            let bad = |error: String| ImportError::Auth { bucket, what, name: name_of(k), error };
            let decoded_name = name_in(v).map_err(|e| bad(e.to_string()))?;
            if decoded_name != k {
                return Err(bad(format!("holds the record of {:?}", name_of(&decoded_name))));
            }
            each(Record { cf: cf_code(Cf::Meta), key: record_key(k), value: v.to_vec() })?;
            *count += 1;
            Ok(())
        })?;
    }
    summary.auth_enabled = auth_enabled;
    if auth_enabled && summary.users == 0 {
        return Err(ImportError::Auth { bucket: "auth", what: "setting", name: "authEnabled".into(), error: "enabled without any user".into() });
    }
    for (key, value) in [(crate::auth::ENABLED_RECORD_KEY, vec![u8::from(auth_enabled)]), (crate::auth::REVISION_RECORD_KEY, auth_revision.to_be_bytes().to_vec())] {
        each(Record { cf: cf_code(Cf::Meta), key: key.to_vec(), value })?;
    }

    // As etcd's store on open: the current revision is the newest of the
    // last revision written and the compactions (a compaction of the
    // newest revision of a deleted key removes that revision, so the last
    // one left can be older), and at least 1, where every store starts.
    // An unfinished scheduled compaction is not taken as done: revisions it
    // already removed read as compacted, the others remain until the next
    // compaction.
    summary.revision = last.max(scheduled).max(finished).max(1);
    summary.compacted = finished;
    for (key, rev) in [(COMPACTED_REV, summary.compacted), (CURRENT_REV, summary.revision)] {
        each(Record { cf: cf_code(Cf::Meta), key: key.to_vec(), value: rev.to_be_bytes().to_vec() })?;
    }
    Ok(summary)
}

/// etcd's auth settings: whether authentication is enabled (etcd's test:
/// the value equals {1}) and the auth revision (8 bytes, big-endian; 0
/// when absent).
fn auth_settings(db: &Db) -> Result<(bool, u64), ImportError> {
    let (mut enabled, mut revision) = (false, Ok(0));
    db.for_each(AUTH_BUCKET, &mut |k, v| {
        if k == AUTH_ENABLED {
            enabled = v == [1];
        } else if k == AUTH_REVISION {
            revision = v.try_into().map(u64::from_be_bytes).map_err(|_| ImportError::Auth {
                bucket: "auth",
                what: "setting",
                name: "authRevision".into(),
                error: format!("{} is not 8 bytes", hex(v)),
            });
        }
        true
    })?;
    Ok((enabled, revision?))
}

/// The main revision stored under `name` in etcd's meta bucket (a revision
/// key, 17 bytes), 0 when absent.
fn meta_revision(db: &Db, name: &'static str) -> Result<i64, ImportError> {
    let key = name.as_bytes();
    let mut rev = Ok(0);
    db.for_each(META_BUCKET, &mut |k, v| {
        if k == key {
            rev = Revision::from_bytes(v)
                .filter(|(_, tombstone)| !tombstone)
                .map(|(r, _)| r.main)
                .ok_or_else(|| ImportError::MetaRevision { name, value: hex(v) });
        }
        k < key
    })?;
    rev
}

/// The kv record of one entry of etcd's `key` bucket, and its main
/// revision. Puts keep etcd's bytes (HashKV hashes them); a tombstone is
/// rewritten the way raftkv writes one, with its revision (etcd's holds
/// only the key, and raftkv's watchers read a delete's revision from it).
fn kv_record(k: &[u8], v: &[u8]) -> Result<(i64, Record), ImportError> {
    let (rev, tombstone) = Revision::from_bytes(k).ok_or_else(|| ImportError::Revision(hex(k)))?;
    let kv = KeyValue::decode(v).map_err(|error| {
        let rev = format!("revision {} (sub {}{})", rev.main, rev.sub, if tombstone { ", a deletion" } else { "" });
        ImportError::KeyValue { rev, error }
    })?;
    let value = if tombstone { KeyValue { key: kv.key, mod_revision: rev.main, ..Default::default() }.encode_to_vec() } else { v.to_vec() };
    Ok((rev.main, Record { cf: cf_code(Cf::Kv), key: k.to_vec(), value }))
}

/// raftkv's record (key, value) of one entry of etcd's `lease` bucket.
fn lease_record(k: &[u8], v: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ImportError> {
    let bad = |what: String| ImportError::Lease { key: hex(k), what };
    let l = EtcdLease::decode(v).map_err(|e| bad(format!("not a Lease: {e}")))?;
    // etcd's key is the id, 8 bytes big-endian; recovery reads the id from
    // the value. They must agree.
    if k != l.id.to_be_bytes() || l.id == 0 {
        return Err(bad(format!("it holds lease id {}", l.id)));
    }
    Ok(lease::record(l.id, l.ttl, l.remaining_ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bbolt::image::{BUCKET, Elem, Image, bucket, inline_bucket};

    fn rev(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
        Revision::new(main, sub).to_bytes(tombstone)
    }

    fn put(key: &str, value: &str, create: i64, m: i64, version: i64, lease: i64) -> Vec<u8> {
        let kv = KeyValue { key: key.into(), value: value.into(), create_revision: create, mod_revision: m, version, lease };
        kv.encode_to_vec()
    }

    fn lease_value(id: i64, ttl: i64, remaining_ttl: i64) -> Vec<u8> {
        EtcdLease { id, ttl, remaining_ttl }.encode_to_vec()
    }

    /// An etcd-like database: buckets in byte order, `key` on a page.
    fn etcd(auth: &[u8], keys: &[Elem<'_>], leases: &[Elem<'_>], meta: &[Elem<'_>]) -> tempfile::NamedTempFile {
        etcd_with_auth(auth, &[], &[], keys, leases, meta)
    }

    fn etcd_with_auth(auth: &[u8], users: &[Elem<'_>], roles: &[Elem<'_>], keys: &[Elem<'_>], leases: &[Elem<'_>], meta: &[Elem<'_>]) -> tempfile::NamedTempFile {
        let mut img = Image::new(4096);
        let key_page = img.leaf(keys);
        let auth = inline_bucket(&[(0, b"authEnabled", auth), (0, b"authRevision", &[0, 0, 0, 0, 0, 0, 0, 4])]);
        let root = img.leaf(&[
            (BUCKET, b"alarm", &inline_bucket(&[])),
            (BUCKET, b"auth", &auth),
            (BUCKET, b"authRoles", &inline_bucket(roles)),
            (BUCKET, b"authUsers", &inline_bucket(users)),
            (BUCKET, b"key", &bucket(key_page)),
            (BUCKET, b"lease", &inline_bucket(leases)),
            (BUCKET, b"members", &inline_bucket(&[(0, b"2e1259d415f2a040", b"{}")])),
            (BUCKET, b"meta", &inline_bucket(meta)),
        ]);
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), img.finish(root)).expect("write");
        f
    }

    fn run(f: &tempfile::NamedTempFile) -> (Result<ImportSummary, ImportError>, Vec<Record>) {
        let db = Db::open(f.path()).expect("open");
        let mut records = Vec::new();
        let r = import(&db, &mut |r| {
            records.push(r);
            Ok(())
        });
        (r, records)
    }

    fn auth(key: &[u8], value: Vec<u8>) -> Record {
        Record { cf: cf_code(Cf::Meta), key: key.to_vec(), value }
    }

    fn meta(key: &[u8], value: i64) -> Record {
        Record { cf: cf_code(Cf::Meta), key: key.to_vec(), value: value.to_be_bytes().to_vec() }
    }

    #[test]
    fn keys_revisions_and_leases_are_imported() {
        let (a2, b2, a3) = (put("a", "1", 2, 2, 1, 0), put("b", "x", 2, 2, 1, 7), put("a", "2", 2, 3, 2, 0));
        let deleted = KeyValue { key: b"a".to_vec(), ..Default::default() }.encode_to_vec();
        let (r20, r21, r30, r4t) = (rev(2, 0, false), rev(2, 1, false), rev(3, 0, false), rev(4, 0, true));
        let keys: Vec<Elem<'_>> = vec![(0, &r20, &a2), (0, &r21, &b2), (0, &r30, &a3), (0, &r4t, &deleted)];
        let (l7, l9) = (lease_value(7, 60, 0), lease_value(9, 600, 42));
        let (id7, id9) = (7i64.to_be_bytes(), 9i64.to_be_bytes());
        let (c3, s5) = (rev(3, 0, false), rev(5, 0, false));
        let meta_bucket: Vec<Elem<'_>> =
            vec![(0, b"consistent_index", &[0, 0, 0, 0, 0, 0, 0, 9]), (0, b"finishedCompactRev", &c3), (0, b"scheduledCompactRev", &s5)];
        let f = etcd(&[0], &keys, &[(0, &id7, &l7), (0, &id9, &l9)], &meta_bucket);
        let (summary, records) = run(&f);
        assert_eq!(summary.expect("import"), ImportSummary { keys: 4, revision: 5, compacted: 3, leases: 2, users: 0, roles: 0, auth_enabled: false });
        let kv = |key: &[u8], value: Vec<u8>| Record { cf: cf_code(Cf::Kv), key: key.to_vec(), value };
        let lease = |(key, value): (Vec<u8>, Vec<u8>)| Record { cf: cf_code(Cf::Meta), key, value };
        let tombstone = KeyValue { key: b"a".to_vec(), mod_revision: 4, ..Default::default() }.encode_to_vec();
        assert_eq!(
            records,
            vec![
                kv(&r20, a2.clone()),
                kv(&r21, b2.clone()),
                kv(&r30, a3.clone()),
                kv(&r4t, tombstone),
                lease(lease::record(7, 60, 0)),
                lease(lease::record(9, 600, 42)),
                auth(crate::auth::ENABLED_RECORD_KEY, vec![0]),
                meta(crate::auth::REVISION_RECORD_KEY, 4),
                meta(COMPACTED_REV, 3),
                meta(CURRENT_REV, 5),
            ]
        );
    }

    #[test]
    fn an_empty_etcd_starts_at_revision_one() {
        let f = etcd(&[0], &[], &[], &[]);
        let (summary, records) = run(&f);
        assert_eq!(summary.expect("import"), ImportSummary { keys: 0, revision: 1, compacted: 0, leases: 0, users: 0, roles: 0, auth_enabled: false });
        let settings = [auth(crate::auth::ENABLED_RECORD_KEY, vec![0]), meta(crate::auth::REVISION_RECORD_KEY, 4)];
        assert_eq!(records, [&settings[..], &[meta(COMPACTED_REV, 0), meta(CURRENT_REV, 1)]].concat());
    }

    #[test]
    fn users_roles_and_enabled_authentication_are_imported() {
        use crate::api::authpb::{Permission, Role, User};
        let root = User { name: b"root".to_vec(), password: b"$2a$10$hash".to_vec(), roles: vec!["root".into()], ..Default::default() };
        let app = User { name: b"app".to_vec(), password: b"$2a$10$other".to_vec(), roles: vec!["app".into()], ..Default::default() };
        let perm = Permission { perm_type: 2, key: b"/app/".to_vec(), range_end: b"/app0".to_vec() };
        let role = Role { name: b"app".to_vec(), key_permission: vec![perm] };
        let root_role = Role { name: b"root".to_vec(), key_permission: vec![] };
        let (root_v, app_v, role_v, root_role_v) = (root.encode_to_vec(), app.encode_to_vec(), role.encode_to_vec(), root_role.encode_to_vec());
        let users: Vec<Elem<'_>> = vec![(0, b"app", &app_v), (0, b"root", &root_v)];
        let roles: Vec<Elem<'_>> = vec![(0, b"app", &role_v), (0, b"root", &root_role_v)];
        let f = etcd_with_auth(&[1], &users, &roles, &[], &[], &[]);
        let (summary, records) = run(&f);
        let summary = summary.expect("import");
        assert_eq!((summary.users, summary.roles, summary.auth_enabled), (2, 2, true));
        let meta_records: Vec<(Vec<u8>, Vec<u8>)> = records.into_iter().map(|r| (r.key, r.value)).collect();
        for (key, value) in [
            (crate::auth::user_record_key(b"app"), app_v.clone()),
            (crate::auth::user_record_key(b"root"), root_v.clone()),
            (crate::auth::role_record_key(b"app"), role_v.clone()),
            (crate::auth::role_record_key(b"root"), root_role_v.clone()),
            (crate::auth::ENABLED_RECORD_KEY.to_vec(), vec![1]),
            (crate::auth::REVISION_RECORD_KEY.to_vec(), 4u64.to_be_bytes().to_vec()),
        ] {
            assert!(meta_records.contains(&(key.clone(), value)), "{}", String::from_utf8_lossy(&key));
        }

        // A damaged user, one filed under another name, and authentication
        // enabled without users are errors naming what.
        let bad: Vec<Elem<'_>> = vec![(0, b"app", b"\xff\xff")];
        let err = run(&etcd_with_auth(&[0], &bad, &[], &[], &[], &[])).0.expect_err("damaged");
        assert!(err.to_string().contains("user app in bucket \"authUsers\""), "{err}");
        let misfiled: Vec<Elem<'_>> = vec![(0, b"bob", &app_v)];
        let err = run(&etcd_with_auth(&[0], &misfiled, &[], &[], &[], &[])).0.expect_err("misfiled");
        assert!(err.to_string().contains("holds the record of \"app\""), "{err}");
        let err = run(&etcd_with_auth(&[1], &[], &[], &[], &[], &[])).0.expect_err("no users");
        assert!(err.to_string().contains("enabled without any user"), "{err}");
    }

    #[test]
    fn damage_is_an_error_naming_what() {
        let (r2, r3, v) = (rev(2, 0, false), rev(3, 1, false), put("a", "1", 2, 2, 1, 0));
        let f = etcd(&[0], &[(0, &r2, &v), (0, &r3, b"\xff\xff\xff")], &[], &[]);
        let (summary, records) = run(&f);
        let err = summary.expect_err("undecodable");
        assert!(err.to_string().contains("revision 3 (sub 1)"), "{err}");
        assert_eq!(records.len(), 1);

        let f = etcd(&[0], &[(0, b"not-a-revision", &v)], &[], &[]);
        assert!(matches!(run(&f).0, Err(ImportError::Revision(_))));
        let l = lease_value(8, 60, 0);
        let f = etcd(&[0], &[], &[(0, &7i64.to_be_bytes(), &l)], &[]);
        assert!(matches!(run(&f).0, Err(ImportError::Lease { .. })));
        let f = etcd(&[0], &[], &[], &[(0, b"finishedCompactRev", b"3")]);
        assert!(matches!(run(&f).0, Err(ImportError::MetaRevision { name: "finishedCompactRev", .. })));

        let mut img = Image::new(4096);
        let root = img.leaf(&[(BUCKET, b"other", &inline_bucket(&[]))]);
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), img.finish(root)).expect("write");
        assert!(matches!(run(&f).0, Err(ImportError::NotEtcd)));
    }

    #[test]
    fn an_error_of_the_caller_stops_the_import() {
        let (r2, r3, v) = (rev(2, 0, false), rev(3, 0, false), put("a", "1", 2, 2, 1, 0));
        let f = etcd(&[0], &[(0, &r2, &v), (0, &r3, &v)], &[], &[]);
        let db = Db::open(f.path()).expect("open");
        let mut calls = 0;
        let r = import(&db, &mut |_| {
            calls += 1;
            Err(StorageError::Engine("disk full".into()).into())
        });
        assert!(matches!(r, Err(ImportError::Storage(_))));
        assert_eq!(calls, 1);
    }
}
