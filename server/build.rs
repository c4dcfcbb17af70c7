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
    // The JSON gateway's descriptors: etcd's own protos with their HTTP
    // annotations (only the descriptor set is used; the code generated on
    // the way goes to a directory nothing includes).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let unused = out.join("gateway");
    std::fs::create_dir_all(&unused)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .out_dir(&unused)
        .file_descriptor_set_path(out.join("gateway.bin"))
        .compile_protos(
            &[
                "proto/gateway/etcd/api/etcdserverpb/rpc.proto",
                "proto/gateway/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
                "proto/gateway/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
            ],
            &["proto/gateway"],
        )?;
    Ok(())
}
