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
    #[prost(oneof = "AuthChange", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub change: Option<AuthChange>,
}

/// A simple token handed to a user that authenticated (the password was
/// checked by the member that proposes it): every member learns it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenGrant {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub token: String,
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
    #[prost(message, tag = "12")]
    Authenticate(TokenGrant),
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

pub struct AuthStore {
    state: RwLock<State>,
    /// Simple tokens: token -> (user, expiry). In memory, as etcd's: a
    /// restarted member forgets them and clients authenticate again.
    tokens: parking_lot::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    /// `--auth-token-ttl`: how long a simple token lives unused.
    token_ttl: parking_lot::RwLock<std::time::Duration>,
    /// `--auth-token jwt,...`: JWT tokens instead of simple ones.
    jwt: parking_lot::RwLock<Option<std::sync::Arc<Jwt>>>,
}

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore {
            state: RwLock::default(),
            tokens: Default::default(),
            token_ttl: parking_lot::RwLock::new(std::time::Duration::from_secs(DEFAULT_TOKEN_TTL_SECS)),
            jwt: parking_lot::RwLock::new(None),
        }
    }
}

/// `--auth-token jwt,...`: etcd's JWT token provider settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub sign_method: String,
    pub pub_key: Option<std::path::PathBuf>,
    pub priv_key: Option<std::path::PathBuf>,
    pub ttl: std::time::Duration,
}

/// etcd's default JWT lifetime.
pub const DEFAULT_JWT_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl JwtConfig {
    /// Parses etcd's `jwt,pub-key=PATH,priv-key=PATH,sign-method=ALG,ttl=5m`;
    /// None for `simple`.
    pub fn parse(flag: &str) -> Result<Option<JwtConfig>, String> {
        let mut parts = flag.split(',');
        match parts.next().unwrap_or_default() {
            "simple" => return Ok(None),
            "jwt" => {}
            other => return Err(format!("--auth-token: unknown token type {other:?} (want simple or jwt)")),
        }
        let mut c = JwtConfig { sign_method: String::new(), pub_key: None, priv_key: None, ttl: DEFAULT_JWT_TTL };
        for part in parts.filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("--auth-token: option {part:?} is not key=value"))?;
            match k {
                "sign-method" => c.sign_method = v.to_owned(),
                "pub-key" => c.pub_key = Some(v.into()),
                "priv-key" => c.priv_key = Some(v.into()),
                "ttl" => c.ttl = humantime::parse_duration(v).map_err(|e| format!("--auth-token: ttl {v:?}: {e}"))?,
                _ => return Err(format!("--auth-token: unknown option {k:?} (jwt takes sign-method, pub-key, priv-key and ttl)")),
            }
        }
        Ok(Some(c))
    }
}

/// JWT claims, as etcd signs them.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// etcd's JWT token provider: tokens signed by the member that
/// authenticates the user, verified by any member with the public key
/// (the secret for HS*); they carry the user and the auth revision they
/// were issued at, so any later auth change makes them old.
pub struct Jwt {
    alg: jsonwebtoken::Algorithm,
    encoding: Option<jsonwebtoken::EncodingKey>,
    decoding: jsonwebtoken::DecodingKey,
    ttl: std::time::Duration,
}

impl Jwt {
    pub fn new(c: &JwtConfig) -> Result<Jwt, String> {
        use jsonwebtoken::{Algorithm as A, DecodingKey, EncodingKey};
        // aws-lc-rs, as raftkv's TLS (already the default when it is the
        // only backend built; said here so that no other crate's choice
        // can change it).
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let alg = match c.sign_method.as_str() {
            "RS256" => A::RS256,
            "RS384" => A::RS384,
            "RS512" => A::RS512,
            "PS256" => A::PS256,
            "PS384" => A::PS384,
            "PS512" => A::PS512,
            "ES256" => A::ES256,
            "ES384" => A::ES384,
            "HS256" => A::HS256,
            "HS384" => A::HS384,
            "HS512" => A::HS512,
            "EdDSA" => A::EdDSA,
            "" => return Err("--auth-token jwt needs sign-method".into()),
            other => return Err(format!("--auth-token jwt: sign-method {other:?} is not supported (RS256/384/512, PS256/384/512, ES256/384, HS256/384/512, EdDSA)")),
        };
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("--auth-token jwt: cannot read {}: {e}", p.display()));
        let bad = |what: &str, p: &std::path::Path, e: jsonwebtoken::errors::Error| format!("--auth-token jwt: {what} {}: {e}", p.display());
        if matches!(alg, A::HS256 | A::HS384 | A::HS512) {
            let path = c.priv_key.as_ref().ok_or("--auth-token jwt: HMAC signing (HS256/384/512) needs priv-key, the shared secret")?;
            let secret = read(path)?;
            return Ok(Jwt { alg, encoding: Some(EncodingKey::from_secret(&secret)), decoding: DecodingKey::from_secret(&secret), ttl: c.ttl });
        }
        let public = c.pub_key.as_ref().ok_or("--auth-token jwt: pub-key is needed to verify tokens")?;
        let pem = read(public)?;
        let decoding = match alg {
            A::ES256 | A::ES384 => DecodingKey::from_ec_pem(&pem),
            A::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        }
        .map_err(|e| bad("pub-key", public, e))?;
        let encoding = match &c.priv_key {
            None => None,
            Some(path) => {
                let pem = read(path)?;
                Some(
                    match alg {
                        A::ES256 | A::ES384 => EncodingKey::from_ec_pem(&pem),
                        A::EdDSA => EncodingKey::from_ed_pem(&pem),
                        _ => EncodingKey::from_rsa_pem(&pem),
                    }
                    .map_err(|e| bad("priv-key", path, e))?,
                )
            }
        };
        Ok(Jwt { alg, encoding, decoding, ttl: c.ttl })
    }

    fn sign(&self, username: &str, revision: u64) -> Result<String, Error> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            Error::Internal("this member verifies JWT tokens only (no priv-key): authenticate with a member that signs them".into())
        })?;
        let exp = (std::time::SystemTime::now() + self.ttl).duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims { username: username.to_owned(), revision, exp };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.alg), &claims, key).map_err(|e| Error::Internal(format!("cannot sign a token: {e}")))
    }

    /// The user and revision of a token this provider signed and that has
    /// not expired.
    fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = jsonwebtoken::Validation::new(self.alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => Some((data.claims.username, data.claims.revision)),
            Err(e) => {
                tracing::warn!(error = %e, "invalid JWT token");
                None
            }
        }
    }
}

/// etcd's default `--auth-token-ttl` (seconds).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 300;

/// Who a request comes from once authentication is enabled: a user (empty
/// when the request named none) and the auth revision its rights were
/// read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub revision: u64,
}

/// What an operation needs of a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// `[start, end)`, `end` None for no end.
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// A permission's keys as an interval: a single key is `[key, key\0)`,
/// a range end of `\0` has no end.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        (key.to_vec(), Some(end))
    } else if range_end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(range_end.to_vec()))
    }
}

/// Whether the union of `granted` covers `wanted`.
fn covers(granted: &mut [Interval], wanted: &Interval) -> bool {
    granted.sort();
    let mut reached = wanted.0.clone();
    for (start, end) in granted.iter() {
        if *start > reached {
            break;
        }
        match end {
            None => return true,
            Some(e) if *e > reached => reached = e.clone(),
            _ => {}
        }
        if let Some(w) = &wanted.1
            && reached >= *w
        {
            return true;
        }
    }
    match &wanted.1 {
        Some(w) => reached >= *w,
        None => false,
    }
}

fn user_key(name: &str) -> Vec<u8> {
    user_record_key(name.as_bytes())
}

fn role_key(name: &str) -> Vec<u8> {
    role_record_key(name.as_bytes())
}

/// The meta record keys of the auth store, for imports (`etcd_import`):
/// a user's (its value an authpb.User), a role's (an authpb.Role), whether
/// authentication is enabled (`[1]` or `[0]`), the auth revision (8 bytes,
/// big-endian).
pub fn user_record_key(name: &[u8]) -> Vec<u8> {
    [USERS, name].concat()
}

pub fn role_record_key(name: &[u8]) -> Vec<u8> {
    [ROLES, name].concat()
}

pub const ENABLED_RECORD_KEY: &[u8] = ENABLED;
pub const REVISION_RECORD_KEY: &[u8] = REVISION;

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

    /// `--auth-token-ttl`.
    pub fn set_token_ttl(&self, ttl: std::time::Duration) {
        *self.token_ttl.write() = ttl;
    }

    /// `--auth-token jwt,...`.
    pub fn set_jwt(&self, jwt: Jwt) {
        *self.jwt.write() = Some(std::sync::Arc::new(jwt));
    }

    /// Whether tokens are JWTs (verified here alone) rather than simple
    /// tokens (handed to every member through raft).
    pub fn uses_jwt(&self) -> bool {
        self.jwt.read().is_some()
    }

    /// A JWT token for `user` at the current auth revision, when this
    /// member hands out JWT tokens (None: simple tokens, through raft).
    pub fn sign_jwt(&self, user: &str) -> Option<Result<String, Error>> {
        let jwt = self.jwt.read().clone()?;
        Some(jwt.sign(user, self.revision()))
    }

    /// The caller of a request: None while authentication is disabled
    /// (anyone may do anything); otherwise the user of its `token` (etcd's
    /// "invalid auth token" for an unknown or expired one), else of its
    /// client certificate's common name, else nobody (an empty user, whom
    /// every check refuses with "user name is empty").
    pub fn caller(&self, token: Option<&str>, common_name: Option<&str>) -> Result<Option<Caller>, Error> {
        let revision = {
            let state = self.state.read();
            if !state.enabled {
                return Ok(None);
            }
            state.revision
        };
        let jwt = self.jwt.read().clone();
        let (user, revision) = match (token, jwt) {
            // A JWT carries the revision it was issued at.
            (Some(t), Some(jwt)) => jwt.verify(t).ok_or(Error::InvalidAuthToken)?,
            (Some(t), None) => (self.token_user(t).ok_or(Error::InvalidAuthToken)?, revision),
            (None, _) => (common_name.unwrap_or_default().to_owned(), revision),
        };
        Ok(Some(Caller { user, revision }))
    }

    /// The user of a simple token, its life renewed by the use.
    fn token_user(&self, token: &str) -> Option<String> {
        let now = std::time::Instant::now();
        let ttl = *self.token_ttl.read();
        let mut tokens = self.tokens.lock();
        match tokens.get_mut(token) {
            Some((user, expiry)) if *expiry > now => {
                *expiry = now + ttl;
                Some(user.clone())
            }
            Some(_) => {
                tokens.remove(token);
                None
            }
            None => None,
        }
    }

    /// Whether `password` is the password of `name` (etcd's
    /// CheckPassword): a user without one never authenticates by password.
    /// bcrypt is slow on purpose: call off the async threads.
    pub fn check_password(&self, name: &str, password: &str) -> Result<(), Error> {
        let hash = {
            let state = self.state.read();
            if !state.enabled {
                return Err(Error::AuthNotEnabled);
            }
            let user = state.users.get(name).ok_or(Error::AuthFailed)?;
            if user.options.as_ref().is_some_and(|o| o.no_password) || user.password.is_empty() {
                return Err(Error::AuthFailed);
            }
            String::from_utf8_lossy(&user.password).into_owned()
        };
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(()),
            _ => Err(Error::AuthFailed),
        }
    }

    /// etcd's isOpPermitted: the caller's roles must grant `need` on
    /// all of `[key, range_end)` (a single key when `range_end` is empty,
    /// no end when it is `\0`); the root role grants everything.
    pub fn check(&self, caller: &Option<Caller>, key: &[u8], range_end: &[u8], need: Need) -> Result<(), Error> {
        let Some(caller) = caller else { return Ok(()) };
        let state = self.state.read();
        if !state.enabled {
            return Ok(());
        }
        if caller.user.is_empty() {
            return Err(Error::UserEmpty);
        }
        // Rights read before an auth change (a JWT issued before it):
        // etcd's "revision of auth store is old", and the client asks again.
        if caller.revision < state.revision {
            return Err(Error::AuthOldRevision);
        }
        let user = state.users.get(&caller.user).ok_or(Error::PermissionDenied)?;
        if user.roles.iter().any(|r| r == ROOT_ROLE) {
            return Ok(());
        }
        let mut granted: Vec<Interval> = user
            .roles
            .iter()
            .filter_map(|r| state.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| match need {
                Need::Read => p.perm_type == 0 || p.perm_type == 2,
                Need::Write => p.perm_type == 1 || p.perm_type == 2,
            })
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        if covers(&mut granted, &interval(key, range_end)) { Ok(()) } else { Err(Error::PermissionDenied) }
    }

    /// Whether `user` may read `[key, end)` now (anyone may while
    /// authentication is disabled): what an open watch is checked against
    /// after an auth change.
    pub fn may_read(&self, user: &str, key: &[u8], end: &crate::mvcc::RangeEnd) -> bool {
        let caller = Some(Caller { user: user.to_owned(), revision: self.revision() });
        self.check(&caller, key, end.as_request(), Need::Read).is_ok()
    }

    /// etcd's IsAdminPermitted: the caller has the root role.
    pub fn check_admin(&self, caller: &Option<Caller>) -> Result<(), Error> {
        let Some(caller) = caller else { return Ok(()) };
        let state = self.state.read();
        if !state.enabled {
            return Ok(());
        }
        if caller.user.is_empty() {
            return Err(Error::UserEmpty);
        }
        let user = state.users.get(&caller.user).ok_or(Error::UserNotFound)?;
        if user.roles.iter().any(|r| r == ROOT_ROLE) { Ok(()) } else { Err(Error::PermissionDenied) }
    }

    /// Whether `user` holds `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.state.read().users.get(user).is_some_and(|u| u.roles.iter().any(|r| r == role))
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
            AuthChange::Authenticate(grant) => {
                if !state.enabled {
                    return Err(Error::AuthNotEnabled);
                }
                if !state.users.contains_key(&grant.name) {
                    return Err(Error::AuthFailed);
                }
                let expiry = std::time::Instant::now() + *self.token_ttl.read();
                self.tokens.lock().insert(grant.token.clone(), (grant.name.clone(), expiry));
                false
            }
            AuthChange::Disable(_) => {
                if state.enabled {
                    self.tokens.lock().clear();
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
                self.tokens.lock().retain(|_, (user, _)| *user != r.name);
                batch.delete(Cf::Meta, user_key(&r.name));
                true
            }
            AuthChange::UserChangePassword(r) => {
                let mut user = state.users.get(&r.name).cloned().ok_or(Error::UserNotFound)?;
                user.password = r.hashed_password.clone().into_bytes();
                put_user(state, batch, user);
                self.tokens.lock().retain(|_, (user, _)| *user != r.name);
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
    fn a_simple_token_names_its_user_until_it_lies_unused_past_its_ttl() {
        let engine = MemEngine::new();
        let store = AuthStore::default();
        assert_eq!(store.caller(Some("anything"), None), Ok(None), "disabled: no caller, no check");
        apply(&store, &engine, user_add("root")).expect("root");
        apply(&store, &engine, grant("root", "root")).expect("grant");
        apply(&store, &engine, AuthChange::Enable(Default::default())).expect("enable");
        store.set_token_ttl(std::time::Duration::from_millis(300));
        let grant_token = AuthChange::Authenticate(TokenGrant { name: "root".into(), token: "abc.1".into() });
        apply(&store, &engine, grant_token).expect("token");
        let caller = store.caller(Some("abc.1"), None).expect("valid").expect("enabled");
        assert_eq!(caller.user, "root");
        assert_eq!(store.caller(Some("forged.2"), None), Err(Error::InvalidAuthToken));
        assert_eq!(store.caller(None, Some("alice")).expect("cn").expect("enabled").user, "alice", "a certificate's CN");
        assert_eq!(store.caller(None, None).expect("nobody").expect("enabled").user, "");
        // Used within its TTL it lives on; unused past it, it is gone.
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(150));
            assert!(store.caller(Some("abc.1"), None).is_ok(), "renewed by use");
        }
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert_eq!(store.caller(Some("abc.1"), None), Err(Error::InvalidAuthToken));
        // Disabling authentication drops every token.
        apply(&store, &engine, AuthChange::Authenticate(TokenGrant { name: "root".into(), token: "def.3".into() })).expect("token");
        apply(&store, &engine, AuthChange::Disable(Default::default())).expect("disable");
        apply(&store, &engine, AuthChange::Enable(Default::default())).expect("enable");
        assert_eq!(store.caller(Some("def.3"), None), Err(Error::InvalidAuthToken), "disabling drops every token");
    }

    #[test]
    fn permissions_cover_keys_ranges_and_prefixes_as_etcds() {
        let engine = MemEngine::new();
        let store = AuthStore::default();
        for c in [user_add("root"), grant("root", "root"), user_add("u"), AuthChange::RoleAdd(AuthRoleAddRequest { name: "r".into() })] {
            apply(&store, &engine, c).expect("setup");
        }
        apply(&store, &engine, perm(0, "/a/", "/a0")).expect("read prefix /a/");
        apply(&store, &engine, perm(2, "/b", "")).expect("readwrite /b");
        apply(&store, &engine, perm(1, "/c", "/e")).expect("write [/c, /e)");
        apply(&store, &engine, perm(1, "/e", "/g")).expect("write [/e, /g)");
        apply(&store, &engine, perm(0, "/z", "\0")).expect("read from /z on");
        apply(&store, &engine, grant("u", "r")).expect("grant");
        apply(&store, &engine, AuthChange::Enable(Default::default())).expect("enable");
        let u = Some(Caller { user: "u".into(), revision: store.revision() });
        let ok = |k: &str, e: &str, n: Need| store.check(&u, k.as_bytes(), e.as_bytes(), n).is_ok();
        assert!(ok("/a/x", "", Need::Read) && ok("/a/", "/a0", Need::Read) && ok("/a/b", "/a/c", Need::Read));
        assert!(!ok("/a/x", "", Need::Write) && !ok("/a", "/a0", Need::Read), "outside the prefix");
        assert!(ok("/b", "", Need::Read) && ok("/b", "", Need::Write) && !ok("/b/", "", Need::Read), "one key only");
        assert!(ok("/c", "/g", Need::Write), "two adjacent ranges cover their union");
        assert!(!ok("/c", "/h", Need::Write) && !ok("/c", "/g", Need::Read));
        assert!(ok("/z", "\0", Need::Read) && ok("/zz", "", Need::Read) && !ok("/y", "\0", Need::Read), "open ended");
        let nobody = Some(Caller { user: String::new(), revision: 0 });
        assert_eq!(store.check(&nobody, b"/a/x", b"", Need::Read), Err(Error::UserEmpty));
        let ghost = Some(Caller { user: "ghost".into(), revision: store.revision() });
        assert_eq!(store.check(&ghost, b"/a/x", b"", Need::Read), Err(Error::PermissionDenied));
        assert_eq!(store.check_admin(&u), Err(Error::PermissionDenied));
        let old = Some(Caller { user: "u".into(), revision: store.revision() - 1 });
        assert_eq!(store.check(&old, b"/a/x", b"", Need::Read), Err(Error::AuthOldRevision), "rights read before an auth change");
        let root = Some(Caller { user: "root".into(), revision: store.revision() });
        assert!(store.check(&root, b"", b"\0", Need::Write).is_ok() && store.check_admin(&root).is_ok());
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
