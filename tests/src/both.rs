//! Differential testing: one scenario runs against a fresh real etcd and a
//! fresh raftkv, and both must make the same observations. The scenario
//! returns what it observed (use [`crate::describe`] so only deterministic
//! fields are recorded); assertions inside it hold for both servers, which
//! also proves the assertions against the reference.
//!
//! `RAFTKV_E2E_FLAVORS` (`etcd`, `raftkv` or `etcd,raftkv`, the default)
//! narrows the run, e.g. to check a scenario against etcd alone. Real etcd is
//! part of the test set-up (`make deps` installs it): when it is selected and
//! not installed, every test that compares with it fails instead of passing
//! by comparing nothing. Checking raftkv alone is asked for explicitly with
//! `RAFTKV_E2E_FLAVORS=raftkv`, and each test then says so in its output.

use std::fmt::Debug;
use std::future::Future;

use anyhow::bail;
use etcd_client::Client;

use crate::binaries::{ETCD, ETCDCTL, etcd_available};
use crate::diff;
use crate::server::{Flavor, Server};

/// The flavors selected by `RAFTKV_E2E_FLAVORS`; an error when etcd is
/// selected and not installed.
pub fn selected_flavors() -> anyhow::Result<Vec<Flavor>> {
    let wanted = std::env::var("RAFTKV_E2E_FLAVORS").unwrap_or_else(|_| "etcd,raftkv".to_owned());
    let mut flavors = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "etcd" if etcd_available() => flavors.push(Flavor::Etcd),
            "etcd" => bail!(
                "real etcd is not installed ({ETCD}, {ETCDCTL}): `make deps` installs it \
                 (Debian's etcd-server and etcd-client); to check raftkv alone, without the \
                 comparison, run with RAFTKV_E2E_FLAVORS=raftkv"
            ),
            "raftkv" => flavors.push(Flavor::Raftkv),
            other => {
                bail!("RAFTKV_E2E_FLAVORS: unknown flavor {other:?} (want etcd and/or raftkv)")
            }
        }
    }
    if flavors.is_empty() {
        bail!("RAFTKV_E2E_FLAVORS={wanted:?} selects no server to run");
    }
    if !flavors.contains(&Flavor::Etcd) {
        eprintln!("note: RAFTKV_E2E_FLAVORS={wanted}: raftkv-only mode, nothing is compared with etcd");
    }
    Ok(flavors)
}

/// Whether a test that needs real etcd (as the reference server, or for its
/// etcdctl) runs it: false, said in the output, only in raftkv-only mode; an
/// error when etcd is wanted and missing.
pub fn with_etcd(test: &str) -> anyhow::Result<bool> {
    let with = selected_flavors()?.contains(&Flavor::Etcd);
    if !with {
        eprintln!("skipped: {test} needs real etcd, and raftkv-only mode was asked for");
    }
    Ok(with)
}

/// Runs `scenario` against each selected server (fresh, default flags) and
/// fails unless all return equal observations.
pub async fn for_both<F, Fut, T>(scenario: F) -> anyhow::Result<()>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Debug,
{
    for_both_with(&[], scenario).await
}

/// [`for_both`] with extra server flags, the same for both servers.
pub async fn for_both_with<F, Fut, T>(server_args: &[&str], scenario: F) -> anyhow::Result<()>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Debug,
{
    let mut observed: Vec<(Flavor, String)> = Vec::new();
    for flavor in selected_flavors()? {
        let server = Server::start_with(flavor, server_args).await?;
        let client = server.client().await?;
        let observation = match scenario(client).await {
            Ok(observation) => observation,
            Err(err) => bail!(
                "scenario failed against {}: {err:#}\nend of its log:\n{}\n(the cause again: {err:#})",
                flavor.name(),
                server.log_tail(20)
            ),
        };
        observed.push((flavor, format!("{observation:#?}")));
    }
    if let [(a_flavor, a), (b_flavor, b)] = observed.as_slice()
        && a != b
    {
        bail!(
            "{} and {} observed different things:\n{}",
            a_flavor.name(),
            b_flavor.name(),
            diff::unified(a_flavor.name(), a, b_flavor.name(), b, 3)
        );
    }
    Ok(())
}
