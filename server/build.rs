//! Generates the Lock, Election and Auth gRPC services (etcd's v3lockpb,
//! v3electionpb, and etcdserverpb's Auth with authpb), whose messages refer
//! to etcd-client's own types, and raftkv's own peer service.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".etcdserverpb.ResponseHeader", "::etcd_client::proto::PbResponseHeader")
        .extern_path(".mvccpb.KeyValue", "::etcd_client::proto::PbKeyValue")
        .compile_protos(&["proto/v3lock.proto", "proto/v3election.proto", "proto/v3auth.proto"], &["proto"])?;
    // The peer service: both ends live in the server.
    tonic_prost_build::configure()
        .extern_path(".raftkvpeer.PeerMember", "crate::membership::Member")
        .compile_protos(&["proto/peer.proto"], &["proto"])?;
    Ok(())
}
