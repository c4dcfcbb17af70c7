//! The auth store, as etcd's: users (a bcrypt hash of the password, the
//! roles granted), roles (permissions on keys, ranges and prefixes), the
//! enabled flag and the auth revision, which every change increments.
//! Changes go through raft ([`AuthChange`]) with passwords already hashed by
//! the member that proposes them (as etcd 3.5: no password in the log);
//! each member keeps the store in memory and persists it with the state
//! (meta records under `auth/`, carried by raft snapshots). It owns the
//! records and etcd's rules on them; enforcing permissions on requests is
//! the API's.

use std::collections::BTreeMap;

use parking_lot::RwLock;
use prost::Message as _;

use crate::api::authpb::{Permission, Role, User, UserAddOptions};
use crate::api::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserChangePasswordRequest, AuthUserDeleteRequest,
    AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
};
use crate::error::Error;
use crate::storage::{Cf, Engine, StorageError, WriteBatch};

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// etcd's default `--bcrypt-cost` (Go's bcrypt.DefaultCost).
pub const DEFAULT_BCRYPT_COST: u32 = 10;

const PREFIX: &[u8] = b"auth/";
const ENABLED: &[u8] = b"auth/enabled";
const REVISION: &[u8] = b"auth/revision";
const USERS: &[u8] = b"auth/users/";
const ROLES: &[u8] = b"auth/roles/";

/// Whether a meta key is an auth store record.
pub fn is_auth_key(k: &[u8]) -> bool {
    k.starts_with(PREFIX)
}

/// A change to the auth store, as raft carries it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthOp {
    #[prost(oneof = "AuthChange", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub change: Option<AuthChange>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AuthChange {
    #[prost(message, tag = "1")]
    Enable(AuthEnableRequest),
    #[prost(message, tag = "2")]
    Disable(AuthDisableRequest),
    /// `password` empty, `hashed_password` set (unless no password).
    #[prost(message, tag = "3")]
    UserAdd(AuthUserAddRequest),
    #[prost(message, tag = "4")]
    UserDelete(AuthUserDeleteRequest),
    /// `password` empty, `hashed_password` set.
    #[prost(message, tag = "5")]
    UserChangePassword(AuthUserChangePasswordRequest),
    #[prost(message, tag = "6")]
    UserGrantRole(AuthUserGrantRoleRequest),
    #[prost(message, tag = "7")]
    UserRevokeRole(AuthUserRevokeRoleRequest),
    #[prost(message, tag = "8")]
    RoleAdd(AuthRoleAddRequest),
    #[prost(message, tag = "9")]
    RoleDelete(AuthRoleDeleteRequest),
    #[prost(message, tag = "10")]
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    #[prost(message, tag = "11")]
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

/// A bcrypt hash of `password` at `cost` (slow on purpose: off the async
/// threads).
pub fn hash_password(password: &str, cost: u32) -> Result<String, Error> {
    bcrypt::hash(password, cost).map_err(|e| Error::Internal(format!("cannot hash the password: {e}")))
}

#[derive(Debug, Clone, Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

#[derive(Default)]
pub struct AuthStore {
    state: RwLock<State>,
}

fn user_key(name: &str) -> Vec<u8> {
    [USERS, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLES, name.as_bytes()].concat()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt { path: "meta".into(), detail: format!("auth store {what}: {e}") }
}

impl AuthStore {
    /// Reads the store persisted with the state (at start, and after a raft
    /// snapshot replaced the state).
    pub fn load(&self, engine: &dyn Engine) -> Result<(), StorageError> {
        let mut state = State::default();
        let mut end = PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut failed = None;
        engine.scan(Cf::Meta, PREFIX, Some(&end), &mut |k, v| {
            let loaded = if k == ENABLED {
                state.enabled = v == [1];
                Ok(())
            } else if k == REVISION {
                v.try_into().map(|b| state.revision = u64::from_be_bytes(b)).map_err(|_| corrupt("revision", "not 8 bytes"))
            } else if let Some(name) = k.strip_prefix(USERS) {
                User::decode(v).map(|u| drop(state.users.insert(String::from_utf8_lossy(name).into_owned(), u))).map_err(|e| corrupt("user", e))
            } else if let Some(name) = k.strip_prefix(ROLES) {
                Role::decode(v).map(|r| drop(state.roles.insert(String::from_utf8_lossy(name).into_owned(), r))).map_err(|e| corrupt("role", e))
            } else {
                Ok(())
            };
            if let Err(e) = loaded {
                failed = Some(e);
                return false;
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        *self.state.write() = state;
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.state.read().enabled
    }

    pub fn revision(&self) -> u64 {
        self.state.read().revision
    }

    /// A user's record (its roles sorted, as granted).
    pub fn user(&self, name: &str) -> Result<User, Error> {
        self.state.read().users.get(name).cloned().ok_or(Error::UserNotFound)
    }

    /// Every user's name, sorted.
    pub fn users(&self) -> Vec<String> {
        self.state.read().users.keys().cloned().collect()
    }

    /// A role's record.
    pub fn role(&self, name: &str) -> Result<Role, Error> {
        self.state.read().roles.get(name).cloned().ok_or(Error::RoleNotFound)
    }

    /// Every role's name, sorted.
    pub fn roles(&self) -> Vec<String> {
        self.state.read().roles.keys().cloned().collect()
    }

    /// What AuthEnable needs, as etcd checks it: a root user with the root
    /// role.
    pub fn check_enable(&self) -> Result<(), Error> {
        let state = self.state.read();
        let root = state.users.get(ROOT_USER).ok_or(Error::RootUserNotExist)?;
        if !root.roles.iter().any(|r| r == ROOT_ROLE) {
            return Err(Error::RootRoleNotExist);
        }
        Ok(())
    }

    /// Applies a change with etcd's rules: the auth revision it left, or
    /// etcd's error (nothing changed then). A change that changes nothing
    /// (enabling twice, granting a role held) succeeds without a new
    /// revision, as in etcd.
    pub fn apply(&self, change: &AuthChange, batch: &mut WriteBatch) -> Result<u64, Error> {
        let mut guard = self.state.write();
        let state = &mut *guard;
        let changed = match change {
            AuthChange::Enable(_) => {
                if state.enabled {
                    false
                } else {
                    let root = state.users.get(ROOT_USER).ok_or(Error::RootUserNotExist)?;
                    if !root.roles.iter().any(|r| r == ROOT_ROLE) {
                        return Err(Error::RootRoleNotExist);
                    }
                    state.enabled = true;
                    batch.put(Cf::Meta, ENABLED.to_vec(), vec![1]);
                    true
                }
            }
            AuthChange::Disable(_) => {
                if state.enabled {
                    state.enabled = false;
                    batch.put(Cf::Meta, ENABLED.to_vec(), vec![0]);
                    true
                } else {
                    false
                }
            }
            AuthChange::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if state.users.contains_key(&r.name) {
                    return Err(Error::UserAlreadyExist);
                }
                let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
                let user = User {
                    name: r.name.clone().into_bytes(),
                    password: if no_password { Vec::new() } else { r.hashed_password.clone().into_bytes() },
                    roles: Vec::new(),
                    options: Some(UserAddOptions { no_password }),
                };
                put_user(state, batch, user);
                true
            }
            AuthChange::UserDelete(r) => {
                if state.enabled && r.name == ROOT_USER {
                    return Err(Error::InvalidAuthMgmt);
                }
                if state.users.remove(&r.name).is_none() {
                    return Err(Error::UserNotFound);
                }
                batch.delete(Cf::Meta, user_key(&r.name));
                true
            }
            AuthChange::UserChangePassword(r) => {
                let mut user = state.users.get(&r.name).cloned().ok_or(Error::UserNotFound)?;
                user.password = r.hashed_password.clone().into_bytes();
                put_user(state, batch, user);
                true
            }
            AuthChange::UserGrantRole(r) => {
                let mut user = state.users.get(&r.user).cloned().ok_or(Error::UserNotFound)?;
                if r.role != ROOT_ROLE && !state.roles.contains_key(&r.role) {
                    return Err(Error::RoleNotFound);
                }
                match user.roles.binary_search(&r.role) {
                    Ok(_) => false,
                    Err(at) => {
                        user.roles.insert(at, r.role.clone());
                        put_user(state, batch, user);
                        true
                    }
                }
            }
            AuthChange::UserRevokeRole(r) => {
                if state.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
                    return Err(Error::InvalidAuthMgmt);
                }
                let mut user = state.users.get(&r.name).cloned().ok_or(Error::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|role| *role != r.role);
                if user.roles.len() == before {
                    return Err(Error::RoleNotGranted);
                }
                put_user(state, batch, user);
                true
            }
            AuthChange::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if state.roles.contains_key(&r.name) {
                    return Err(Error::RoleAlreadyExist);
                }
                put_role(state, batch, Role { name: r.name.clone().into_bytes(), key_permission: Vec::new() });
                true
            }
            AuthChange::RoleDelete(r) => {
                if state.enabled && r.role == ROOT_ROLE {
                    return Err(Error::InvalidAuthMgmt);
                }
                if state.roles.remove(&r.role).is_none() {
                    return Err(Error::RoleNotFound);
                }
                batch.delete(Cf::Meta, role_key(&r.role));
                // The role is revoked from every user that had it.
                let holders: Vec<User> = state.users.values().filter(|u| u.roles.contains(&r.role)).cloned().collect();
                for mut user in holders {
                    user.roles.retain(|role| *role != r.role);
                    put_user(state, batch, user);
                }
                true
            }
            AuthChange::RoleGrantPermission(r) => {
                let perm = r.perm.clone().ok_or(Error::PermissionNotGiven)?;
                let mut role = state.roles.get(&r.name).cloned().ok_or(Error::RoleNotFound)?;
                // etcd's order: by key; the same key and range end is
                // updated in place.
                let at = role.key_permission.partition_point(|p| p.key < perm.key);
                match role.key_permission.get_mut(at) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => p.perm_type = perm.perm_type,
                    _ => role.key_permission.insert(at, perm),
                }
                put_role(state, batch, role);
                true
            }
            AuthChange::RoleRevokePermission(r) => {
                let mut role = state.roles.get(&r.role).cloned().ok_or(Error::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission.retain(|p: &Permission| !(p.key == r.key && p.range_end == r.range_end));
                if role.key_permission.len() == before {
                    return Err(Error::PermissionNotGranted);
                }
                put_role(state, batch, role);
                true
            }
        };
        if changed {
            state.revision += 1;
            batch.put(Cf::Meta, REVISION.to_vec(), state.revision.to_be_bytes().to_vec());
        }
        Ok(state.revision)
    }
}

fn put_user(state: &mut State, batch: &mut WriteBatch, user: User) {
    let name = String::from_utf8_lossy(&user.name).into_owned();
    batch.put(Cf::Meta, user_key(&name), user.encode_to_vec());
    state.users.insert(name, user);
}

fn put_role(state: &mut State, batch: &mut WriteBatch, role: Role) {
    let name = String::from_utf8_lossy(&role.name).into_owned();
    batch.put(Cf::Meta, role_key(&name), role.encode_to_vec());
    state.roles.insert(name, role);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;

    fn apply(store: &AuthStore, engine: &MemEngine, change: AuthChange) -> Result<u64, Error> {
        let mut b = WriteBatch::default();
        let r = store.apply(&change, &mut b);
        engine.write(b, true).expect("write");
        r
    }

    fn user_add(name: &str) -> AuthChange {
        AuthChange::UserAdd(AuthUserAddRequest { name: name.into(), hashed_password: "h".into(), ..Default::default() })
    }

    fn grant(user: &str, role: &str) -> AuthChange {
        AuthChange::UserGrantRole(AuthUserGrantRoleRequest { user: user.into(), role: role.into() })
    }

    fn perm(t: i32, key: &str, end: &str) -> AuthChange {
        AuthChange::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(Permission { perm_type: t, key: key.into(), range_end: end.into() }),
        })
    }

    #[test]
    fn passwords_are_bcrypt_hashes_at_the_given_cost() {
        let hash = hash_password("s3cret", 4).expect("hash");
        assert!(hash.starts_with("$2") && hash.contains("$04$"), "{hash}");
        assert!(bcrypt::verify("s3cret", &hash).expect("verify"));
        assert!(!bcrypt::verify("other", &hash).expect("verify"));
    }

    #[test]
    fn the_store_follows_etcds_rules_and_survives_a_reload() {
        let engine = MemEngine::new();
        let store = AuthStore::default();
        assert_eq!(apply(&store, &engine, AuthChange::Enable(Default::default())), Err(Error::RootUserNotExist));
        assert_eq!(apply(&store, &engine, user_add("")), Err(Error::UserEmpty));
        assert_eq!(apply(&store, &engine, user_add("root")), Ok(1));
        assert_eq!(apply(&store, &engine, user_add("root")), Err(Error::UserAlreadyExist));
        assert_eq!(apply(&store, &engine, AuthChange::Enable(Default::default())), Err(Error::RootRoleNotExist));
        assert_eq!(apply(&store, &engine, grant("root", "other")), Err(Error::RoleNotFound));
        // The root role needs no record to be granted.
        assert_eq!(apply(&store, &engine, grant("root", "root")), Ok(2));
        assert_eq!(apply(&store, &engine, grant("root", "root")), Ok(2), "granted twice: no change");
        assert_eq!(apply(&store, &engine, AuthChange::RoleAdd(AuthRoleAddRequest { name: "r".into() })), Ok(3));
        assert_eq!(apply(&store, &engine, perm(0, "b", "c")), Ok(4));
        assert_eq!(apply(&store, &engine, perm(1, "a", "")), Ok(5));
        assert_eq!(apply(&store, &engine, perm(2, "b", "c")), Ok(6), "the same range: updated");
        let keys: Vec<(Vec<u8>, i32)> = store.role("r").expect("role").key_permission.iter().map(|p| (p.key.clone(), p.perm_type)).collect();
        assert_eq!(keys, [(b"a".to_vec(), 1), (b"b".to_vec(), 2)]);
        assert_eq!(apply(&store, &engine, grant("root", "r")), Ok(7));
        assert_eq!(store.user("root").expect("root").roles, ["r", "root"], "roles sorted");
        assert_eq!(apply(&store, &engine, AuthChange::Enable(Default::default())), Ok(8));
        assert_eq!(
            apply(&store, &engine, AuthChange::UserDelete(AuthUserDeleteRequest { name: "root".into() })),
            Err(Error::InvalidAuthMgmt)
        );
        assert_eq!(
            apply(&store, &engine, AuthChange::UserRevokeRole(AuthUserRevokeRoleRequest { name: "root".into(), role: "root".into() })),
            Err(Error::InvalidAuthMgmt)
        );
        assert_eq!(
            apply(&store, &engine, AuthChange::RoleRevokePermission(AuthRoleRevokePermissionRequest { role: "r".into(), key: b"z".to_vec(), range_end: vec![] })),
            Err(Error::PermissionNotGranted)
        );

        let reloaded = AuthStore::default();
        reloaded.load(&engine).expect("load");
        assert!(reloaded.enabled());
        assert_eq!(reloaded.revision(), 8);
        assert_eq!(reloaded.user("root").expect("root").roles, ["r", "root"]);
        assert_eq!(reloaded.role("r").expect("r"), store.role("r").expect("r"));

        // Deleting a role revokes it from its users.
        assert_eq!(apply(&reloaded, &engine, AuthChange::RoleDelete(AuthRoleDeleteRequest { role: "r".into() })), Ok(9));
        assert_eq!(reloaded.user("root").expect("root").roles, ["root"]);
        assert_eq!(
            apply(&reloaded, &engine, AuthChange::UserRevokeRole(AuthUserRevokeRoleRequest { name: "root".into(), role: "r".into() })),
            Err(Error::RoleNotGranted)
        );
        let again = AuthStore::default();
        again.load(&engine).expect("load");
        assert_eq!(again.roles(), Vec::<String>::new());
        assert_eq!(again.user("root").expect("root").roles, ["root"]);
    }
}
