//! raftkv: a distributed, reliable key-value store that speaks the etcd v3
//! API.
//!
//! # Layout
//! - `storage`: the engine trait; `rocks` (the only file naming RocksDB) and
//!   `mem` (tests).
//! - `raft`: raft-rs's Ready loop, the raft log over the engine. Knows no
//!   domain module.
//! - `mvcc`: revisions, the key index, reads at revisions, write
//!   transactions, compaction.
//! - `lease`: leases, their keys and expiry.
//! - `watch`: watchers, fed by the applier and from MVCC history.
//! - `alarm`: NOSPACE and CORRUPT alarms, replicated, and etcd's quota cost;
//!   `corrupt`: the initial and periodic corruption checks that raise CORRUPT.
//! - `apply`: the state machine, one file per request kind.
//! - `api`: gRPC/HTTP adapters and the single error -> status table.
//! - `membership`: the member registry, replicated through raft.
//! - `snapshot`: raft snapshots as engine checkpoints, sent and received.
//! - `backup`: the snapshot file of `Maintenance.Snapshot`, `snapshot save`
//!   and `snapshot restore`: its format, hash and status; `restore`: a new
//!   member's data dir from such a file.
//! - `bbolt`: a read-only reader of bbolt files (etcd's backend and snapshots).
//! - `etcd_import`: an etcd snapshot as raftkv's state records.
//! - `peer`: the peer service and transport between members.
//! - `node`: wiring, bootstrap and join, propose and linearizable reads;
//!   `server`: `run`.
//! - `metrics`: Prometheus metrics with etcd's names.
//! - `sim`: one member without threads, timers or sockets, for the
//!   deterministic simulation of whole clusters (`tests/src/sim.rs`).
//! - `fuzzing`: the fuzz targets' bodies, invariants and seeds (`fuzz/`,
//!   replayed by `tests/fuzz_regressions.rs`; docs/fuzzing.md).
//! - `config`: etcd's flags; `compactor`: auto compaction; `error`: the
//!   errors clients see, with etcd's texts.
//!
//! Dependencies point one way: api -> node -> apply -> (mvcc, lease) ->
//! storage; raft -> storage.

pub mod alarm;
pub mod api;
pub mod auth;
pub mod apply;
pub mod backup;
pub mod bbolt;
pub mod etcd_import;
pub mod fuzzing;
pub mod compactor;
pub mod config;
pub mod corrupt;
pub mod error;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod peer;
pub mod raft;
pub mod restore;
pub mod server;
pub mod sim;
pub mod snapshot;
pub mod storage;
pub mod tls;
pub mod watch;
