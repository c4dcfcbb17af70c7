//! The Auth service: users, roles and their permissions, kept in the auth
//! store through raft, with etcd's rules and errors. Reads (UserGet,
//! UserList, RoleGet, RoleList, AuthStatus) are linearizable, as etcd's,
//! which puts them through raft.
//!
//! Not yet: enabling authentication. AuthEnable checks etcd's
//! preconditions (a root user with the root role) and is then refused:
//! until every RPC enforces the permissions, an enabled auth store would
//! be a door shown locked and left open. Authenticate answers etcd's
//! "authentication is not enabled" accordingly.

use std::sync::Arc;

use tonic::{Request, Response};

use super::etcdserverpb::auth_server::Auth;
use super::etcdserverpb::*;
use super::{Reply, status};
use crate::apply::Response as Applied;
use crate::apply::request::Op;
use crate::auth::{AuthChange, AuthOp};
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

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, _req: Request<AuthEnableRequest>) -> Reply<AuthEnableResponse> {
        self.read().await?;
        self.node.auth.check_enable().map_err(status)?;
        Err(status(Error::Unsupported("auth enable (permissions are not enforced yet)")))
    }

    async fn auth_disable(&self, _req: Request<AuthDisableRequest>) -> Reply<AuthDisableResponse> {
        self.change(AuthChange::Disable(AuthDisableRequest {})).await?;
        Ok(Response::new(AuthDisableResponse { header: self.header() }))
    }

    async fn auth_status(&self, _req: Request<AuthStatusRequest>) -> Reply<AuthStatusResponse> {
        self.read().await?;
        let auth = &self.node.auth;
        Ok(Response::new(AuthStatusResponse { header: self.header(), enabled: auth.enabled(), auth_revision: auth.revision() }))
    }

    async fn authenticate(&self, _req: Request<AuthenticateRequest>) -> Reply<AuthenticateResponse> {
        Err(status(Error::AuthNotEnabled))
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Reply<AuthUserAddResponse> {
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
        self.read().await?;
        let user = self.node.auth.user(&req.into_inner().name).map_err(status)?;
        Ok(Response::new(AuthUserGetResponse { header: self.header(), roles: user.roles }))
    }

    async fn user_list(&self, _req: Request<AuthUserListRequest>) -> Reply<AuthUserListResponse> {
        self.read().await?;
        Ok(Response::new(AuthUserListResponse { header: self.header(), users: self.node.auth.users() }))
    }

    async fn user_delete(&self, req: Request<AuthUserDeleteRequest>) -> Reply<AuthUserDeleteResponse> {
        self.change(AuthChange::UserDelete(req.into_inner())).await?;
        Ok(Response::new(AuthUserDeleteResponse { header: self.header() }))
    }

    async fn user_change_password(&self, req: Request<AuthUserChangePasswordRequest>) -> Reply<AuthUserChangePasswordResponse> {
        let mut r = req.into_inner();
        // An unknown user is told so before the (slow) hash is made.
        self.node.auth.user(&r.name).map_err(status)?;
        r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        self.change(AuthChange::UserChangePassword(r)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header: self.header() }))
    }

    async fn user_grant_role(&self, req: Request<AuthUserGrantRoleRequest>) -> Reply<AuthUserGrantRoleResponse> {
        self.change(AuthChange::UserGrantRole(req.into_inner())).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header: self.header() }))
    }

    async fn user_revoke_role(&self, req: Request<AuthUserRevokeRoleRequest>) -> Reply<AuthUserRevokeRoleResponse> {
        self.change(AuthChange::UserRevokeRole(req.into_inner())).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header: self.header() }))
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Reply<AuthRoleAddResponse> {
        self.change(AuthChange::RoleAdd(req.into_inner())).await?;
        Ok(Response::new(AuthRoleAddResponse { header: self.header() }))
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Reply<AuthRoleGetResponse> {
        self.read().await?;
        let role = self.node.auth.role(&req.into_inner().role).map_err(status)?;
        Ok(Response::new(AuthRoleGetResponse { header: self.header(), perm: role.key_permission }))
    }

    async fn role_list(&self, _req: Request<AuthRoleListRequest>) -> Reply<AuthRoleListResponse> {
        self.read().await?;
        Ok(Response::new(AuthRoleListResponse { header: self.header(), roles: self.node.auth.roles() }))
    }

    async fn role_delete(&self, req: Request<AuthRoleDeleteRequest>) -> Reply<AuthRoleDeleteResponse> {
        self.change(AuthChange::RoleDelete(req.into_inner())).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header: self.header() }))
    }

    async fn role_grant_permission(&self, req: Request<AuthRoleGrantPermissionRequest>) -> Reply<AuthRoleGrantPermissionResponse> {
        self.change(AuthChange::RoleGrantPermission(req.into_inner())).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header: self.header() }))
    }

    async fn role_revoke_permission(&self, req: Request<AuthRoleRevokePermissionRequest>) -> Reply<AuthRoleRevokePermissionResponse> {
        self.change(AuthChange::RoleRevokePermission(req.into_inner())).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header: self.header() }))
    }
}
