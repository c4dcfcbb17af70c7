//! End-to-end test harness: runs the real `raftkv` binary, or real etcd for
//! comparison, as a child process on loopback ports and hands out
//! `etcd_client` clients to it. The tests themselves live in `tests/tests/`.
//!
//! This crate only drives processes and speaks the public etcd v3 API; it must
//! never link the server crate, so that what it proves holds for any client.
//!
//! Run: `cargo build --workspace --bins && cargo test -p raftkv-tests`. The
//! comparisons need real etcd and etcdctl 3.4 in /usr/bin (the Makefile
//! installs Debian's); without them every test that compares with etcd fails,
//! saying what to install. `RAFTKV_E2E_FLAVORS=raftkv` asks for raftkv alone
//! (each comparison then says in its output that it compared nothing);
//! `RAFTKV_E2E_FLAVORS=etcd` runs the differential scenarios against etcd
//! alone, to check a new scenario's expectations.
//!
//! # Layout
//! - [`binaries`]: where the built `raftkv` / `raftkvctl` and etcd are.
//! - [`ports`]: free loopback ports.
//! - [`certs`]: a CA of the test's own and the certificates it signs
//!   (valid, expired, for another host), for the TLS tests.
//! - [`server`]: [`Server`], one raftkv or etcd process with a temporary
//!   data dir: start, wait until ready, kill -9, restart, stop; a
//!   single-member cluster of its own or a member of a [`Cluster`].
//! - [`cluster`]: [`Cluster`], n members of either flavor on loopback,
//!   peers talking through [`proxy`]; kill -9, restart, stop and start
//!   all, add (learner) and remove members the way etcd documents it, a
//!   stranger process of another cluster, and [`cluster::for_each_flavor`]
//!   to prove a scenario on etcd and then hold raftkv to it.
//! - [`proxy`]: a TCP proxy in front of each member's peer port that can
//!   cut a member off its peers and heal it.
//! - [`both`]: [`for_both`], run one scenario against real etcd and raftkv
//!   and require the same observations.
//! - [`acked`]: writers that record every acknowledged put, the whole
//!   keyspace read back, and the check that nothing acknowledged is lost.
//! - [`describe`]: deterministic one-line descriptions of responses and gRPC
//!   errors, the vocabulary of those observations.
//! - [`diff`]: a small unified line diff for failure messages.
//! - [`history`]: clients that record a history of KV requests (outcomes
//!   unknown included) and `lincheck`, porcupine's verdict on it.
//! - [`watchcheck`]: watchers that follow a prefix through faults, and the
//!   checks of what they saw against the store's own history.
//! - [`chaos`]: one fault run: a cluster, faults, the checkers' verdicts.
//! - [`sim`]: the deterministic simulation: a whole cluster in one thread,
//!   simulated time, network and disk, decided by a seed, and the same
//!   checkers.
//! - [`k8s`]: a real Kubernetes control plane (kube-apiserver,
//!   kube-controller-manager, kubectl from `tests/k8s`) on raftkv or etcd.
//! - [`objstores`]: real object stores on loopback (versitygw for S3,
//!   fake-gcs-server, Azurite, a directory) for the backup tests.

pub mod acked;
pub mod binaries;
pub mod both;
pub mod certs;
pub mod chaos;
pub mod cluster;
pub mod describe;
pub mod diff;
pub mod history;
pub mod k8s;
pub mod nodes;
pub mod objstores;
pub mod ports;
pub mod proxy;
pub mod server;
pub mod sim;
pub mod transcript;
pub mod watchcheck;

pub use both::{for_both, for_both_with, selected_flavors, with_etcd};
pub use cluster::Cluster;
pub use server::{Flavor, Server};

/// `len` bytes that do not compress (raftkv's engine compresses its files,
/// so size tests need data that stays its size), the same for a `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
