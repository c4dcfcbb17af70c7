//! The Cluster service: the member list (membership changes arrive with
//! clustering).

use std::sync::Arc;

use etcd_client::proto::{
    PbClusterService, PbMember as Member, PbMemberAddRequest as MemberAddRequest, PbMemberAddResponse as MemberAddResponse,
    PbMemberListRequest as MemberListRequest, PbMemberListResponse as MemberListResponse,
    PbMemberPromoteRequest as MemberPromoteRequest, PbMemberPromoteResponse as MemberPromoteResponse,
    PbMemberRemoveRequest as MemberRemoveRequest, PbMemberRemoveResponse as MemberRemoveResponse,
    PbMemberUpdateRequest as MemberUpdateRequest, PbMemberUpdateResponse as MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Reply;
use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn members(&self) -> Vec<Member> {
        let m = &self.node.member;
        vec![Member {
            id: m.id,
            name: m.name.clone(),
            peer_ur_ls: m.peer_urls.clone(),
            client_ur_ls: m.client_urls.clone(),
            is_learner: false,
        }]
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("raftkv does not implement {what} yet"))
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(&self, _req: Request<MemberAddRequest>) -> Reply<MemberAddResponse> {
        Err(unimplemented("MemberAdd"))
    }

    async fn member_remove(&self, _req: Request<MemberRemoveRequest>) -> Reply<MemberRemoveResponse> {
        Err(unimplemented("MemberRemove"))
    }

    async fn member_update(&self, _req: Request<MemberUpdateRequest>) -> Reply<MemberUpdateResponse> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_list(&self, _req: Request<MemberListRequest>) -> Reply<MemberListResponse> {
        Ok(Response::new(MemberListResponse { header: Some(self.node.header(0)), members: self.members() }))
    }

    async fn member_promote(&self, _req: Request<MemberPromoteRequest>) -> Reply<MemberPromoteResponse> {
        Err(unimplemented("MemberPromote"))
    }
}
