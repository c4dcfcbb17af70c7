//! The Auth service: users, roles and their permissions, kept in the auth
//! store through raft, with etcd's rules and errors. Reads (UserGet,
//! UserList, RoleGet, RoleList, AuthStatus) are linearizable, as etcd's,
//! which puts them through raft.
//!
//! Once enabled, managing users and roles takes the root role (a user may
//! still read its own record and the roles it holds); Authenticate checks
//! the password and hands out a simple token, which every member learns
//! through raft.

use std::sync::Arc;

use tonic::{Request, Response};

use super::etcdserverpb::auth_server::Auth;
use super::etcdserverpb::*;
use super::{Reply, status};
use crate::apply::Response as Applied;
use crate::apply::request::Op;
use crate::auth::{AuthChange, AuthOp, TokenGrant};
use crate::error::Error;
use crate::node::Node;

pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn header(&self) -> Option<etcd_client::proto::PbResponseHeader> {
        Some(self.node.header(self.node.store.current_revision()))
    }

    /// Proposes a change; the auth revision it left.
    async fn change(&self, change: AuthChange) -> Result<u64, tonic::Status> {
        match self.node.propose(Op::Auth(AuthOp { change: Some(change) })).await.map_err(status)? {
            Applied::Auth(revision) => Ok(revision),
            _ => Err(status(Error::Internal("unexpected apply result for an auth change".into()))),
        }
    }

    /// etcd's admin check of auth management: the root role, once
    /// authentication is enabled.
    fn admin<T>(&self, req: &Request<T>) -> impl Future<Output = Result<(), tonic::Status>> + Send + '_ {
        let caller = super::caller(&self.node, req);
        async move { self.node.auth.check_admin(&caller.await?).map_err(status) }
    }

    /// A read of the auth store as of now, cluster-wide.
    async fn read(&self) -> Result<(), tonic::Status> {
        self.node.refuse_learner().map_err(status)?;
        self.node.linearizable_read().await.map_err(status)
    }

    /// A bcrypt hash of `password`, made off the async threads.
    async fn hash(&self, password: String) -> Result<String, tonic::Status> {
        let cost = self.node.bcrypt_cost;
        tokio::task::spawn_blocking(move || crate::auth::hash_password(&password, cost))
            .await
            .map_err(|e| status(Error::Internal(e.to_string())))?
            .map_err(status)
    }
}

/// 16 random letters: a simple token's prefix, as etcd's genTokenPrefix.
fn token_prefix() -> String {
    use rand::Rng;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..16).map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char).collect()
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Reply<AuthEnableResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::Enable(AuthEnableRequest {})).await?;
        Ok(Response::new(AuthEnableResponse { header: self.header() }))
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Reply<AuthDisableResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::Disable(AuthDisableRequest {})).await?;
        Ok(Response::new(AuthDisableResponse { header: self.header() }))
    }

    async fn auth_status(&self, _req: Request<AuthStatusRequest>) -> Reply<AuthStatusResponse> {
        self.read().await?;
        let auth = &self.node.auth;
        Ok(Response::new(AuthStatusResponse { header: self.header(), enabled: auth.enabled(), auth_revision: auth.revision() }))
    }

    /// etcd's Authenticate: the password checked here, after a read index
    /// (bcrypt, off the async threads), then a simple token handed to
    /// every member through raft. Asked again if the auth store changed
    /// meanwhile.
    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Reply<AuthenticateResponse> {
        let r = req.into_inner();
        self.read().await?;
        loop {
            let checked = self.node.auth.revision();
            let auth = self.node.auth.clone();
            let (name, password) = (r.name.clone(), r.password.clone());
            tokio::task::spawn_blocking(move || auth.check_password(&name, &password))
                .await
                .map_err(|e| status(Error::Internal(e.to_string())))?
                .map_err(|e| {
                    if e != Error::AuthNotEnabled {
                        tracing::warn!(user = %r.name, "invalid authentication request");
                    }
                    status(e)
                })?;
            if let Some(signed) = self.node.auth.sign_jwt(&r.name) {
                // A JWT needs no raft round: any member verifies it.
                let token = signed.map_err(status)?;
                return Ok(Response::new(AuthenticateResponse { header: self.header(), token }));
            }
            let token = format!("{}.{}", token_prefix(), self.node.new_lease_id());
            self.change(AuthChange::Authenticate(TokenGrant { name: r.name.clone(), token: token.clone() })).await?;
            if checked == self.node.auth.revision() {
                return Ok(Response::new(AuthenticateResponse { header: self.header(), token }));
            }
        }
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Reply<AuthUserAddResponse> {
        self.admin(&req).await?;
        let mut r = req.into_inner();
        if r.name.is_empty() {
            return Err(status(Error::UserEmpty));
        }
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        // As etcd 3.5: hashed here, so no password ever enters the log.
        r.hashed_password = if no_password { String::new() } else { self.hash(std::mem::take(&mut r.password)).await? };
        r.password.clear();
        self.change(AuthChange::UserAdd(r)).await?;
        Ok(Response::new(AuthUserAddResponse { header: self.header() }))
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Reply<AuthUserGetResponse> {
        let caller = super::caller(&self.node, &req).await?;
        let name = req.into_inner().name;
        // A user may read its own record (etcd).
        if caller.as_ref().is_none_or(|c| c.user != name) {
            self.node.auth.check_admin(&caller).map_err(status)?;
        }
        self.read().await?;
        let user = self.node.auth.user(&name).map_err(status)?;
        Ok(Response::new(AuthUserGetResponse { header: self.header(), roles: user.roles }))
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Reply<AuthUserListResponse> {
        self.admin(&req).await?;
        self.read().await?;
        Ok(Response::new(AuthUserListResponse { header: self.header(), users: self.node.auth.users() }))
    }

    async fn user_delete(&self, req: Request<AuthUserDeleteRequest>) -> Reply<AuthUserDeleteResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::UserDelete(req.into_inner())).await?;
        Ok(Response::new(AuthUserDeleteResponse { header: self.header() }))
    }

    async fn user_change_password(&self, req: Request<AuthUserChangePasswordRequest>) -> Reply<AuthUserChangePasswordResponse> {
        self.admin(&req).await?;
        let mut r = req.into_inner();
        // An unknown user is told so before the (slow) hash is made.
        self.node.auth.user(&r.name).map_err(status)?;
        r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        self.change(AuthChange::UserChangePassword(r)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header: self.header() }))
    }

    async fn user_grant_role(&self, req: Request<AuthUserGrantRoleRequest>) -> Reply<AuthUserGrantRoleResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::UserGrantRole(req.into_inner())).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header: self.header() }))
    }

    async fn user_revoke_role(&self, req: Request<AuthUserRevokeRoleRequest>) -> Reply<AuthUserRevokeRoleResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::UserRevokeRole(req.into_inner())).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header: self.header() }))
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Reply<AuthRoleAddResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::RoleAdd(req.into_inner())).await?;
        Ok(Response::new(AuthRoleAddResponse { header: self.header() }))
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Reply<AuthRoleGetResponse> {
        let caller = super::caller(&self.node, &req).await?;
        let role = req.into_inner().role;
        // A user may read the roles it holds (etcd).
        if caller.as_ref().is_none_or(|c| !self.node.auth.has_role(&c.user, &role)) {
            self.node.auth.check_admin(&caller).map_err(status)?;
        }
        self.read().await?;
        let role = self.node.auth.role(&role).map_err(status)?;
        Ok(Response::new(AuthRoleGetResponse { header: self.header(), perm: role.key_permission }))
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Reply<AuthRoleListResponse> {
        self.admin(&req).await?;
        self.read().await?;
        Ok(Response::new(AuthRoleListResponse { header: self.header(), roles: self.node.auth.roles() }))
    }

    async fn role_delete(&self, req: Request<AuthRoleDeleteRequest>) -> Reply<AuthRoleDeleteResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::RoleDelete(req.into_inner())).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header: self.header() }))
    }

    async fn role_grant_permission(&self, req: Request<AuthRoleGrantPermissionRequest>) -> Reply<AuthRoleGrantPermissionResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::RoleGrantPermission(req.into_inner())).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header: self.header() }))
    }

    async fn role_revoke_permission(&self, req: Request<AuthRoleRevokePermissionRequest>) -> Reply<AuthRoleRevokePermissionResponse> {
        self.admin(&req).await?;
        self.change(AuthChange::RoleRevokePermission(req.into_inner())).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header: self.header() }))
    }
}
