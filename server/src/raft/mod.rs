//! Consensus: raft-rs driven by one Ready loop on its own thread, its log
//! and hard state in the engine's `raft` column family. It knows nothing of
//! the application's data: committed entries go to a `StateMachine`.

pub mod log;
pub mod node;

pub use node::{RaftConfig, RaftError, RaftHandle, RaftStatus, StateMachine, Transport};
