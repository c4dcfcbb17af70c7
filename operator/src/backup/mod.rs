//! Backups: the `KvBackup` and `KvBackupSchedule` kinds and the pure parts
//! of taking them.
//! - [`crd`]: the two kinds and the destination they share with a restore.
//! - [`schedule`]: when a schedule takes its next backup (cron, suspend,
//!   immediate, missed runs), on a clock passed in.
//! - [`retention`]: which of a schedule's backups its retention prunes.
//! - [`job`]: the backup Job (`raftkvctl snapshot save URL` against one
//!   member, credentials from Secrets) and the report it leaves.
//! - [`decide`]: the next step of one backup, from what was read.
//! - [`restore`]: `spec.bootstrap.restore` resolved to a snapshot.
//! - [`controller`]: the two reconcilers over the API server.

pub mod controller;
pub mod crd;
pub mod decide;
pub mod job;
pub mod restore;
pub mod retention;
pub mod schedule;
