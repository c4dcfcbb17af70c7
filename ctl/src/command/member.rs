//! `member add|remove|update|promote|list`: etcdctl 3.4's membership
//! commands. Member ids are hex on the command line and in the simple
//! format, decimal elsewhere.
//!
//! As in etcdctl, a change is made before its answer is printed: a format
//! that cannot print it reports so after the member was added, removed,
//! updated or promoted.

use clap::{Args, Subcommand};
use etcd_client::proto::{PbMember, PbResponseHeader};
use etcd_client::{Client, MemberAddOptions};

use super::{Ctx, flush};
use crate::error::CtlError;
use crate::gofmt::parse_uint;
use crate::printer::Format;

#[derive(Subcommand, Debug, Clone)]
pub enum MemberCommand {
    /// Adds a member into the cluster
    Add(AddArgs),
    /// Removes a member from the cluster
    Remove(IdArgs),
    /// Updates a member in the cluster
    Update(UpdateArgs),
    /// Lists all members in the cluster
    List,
    /// Promotes a non-voting member in the cluster
    Promote(IdArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AddArgs {
    /// comma separated peer URLs for the new member.
    #[arg(long = "peer-urls", default_value = "")]
    peer_urls: String,
    /// indicates if the new member is raft learner
    #[arg(long)]
    learner: bool,
    /// <memberName>
    args: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// comma separated peer URLs for the updated member.
    #[arg(long = "peer-urls", default_value = "")]
    peer_urls: String,
    /// <memberID>
    args: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct IdArgs {
    /// <memberID>
    args: Vec<String>,
}

pub async fn run(cmd: MemberCommand, ctx: &Ctx) -> Result<(), CtlError> {
    match cmd {
        MemberCommand::Add(args) => add(args, ctx).await,
        MemberCommand::Remove(args) => remove(args, ctx).await,
        MemberCommand::Update(args) => update(args, ctx).await,
        MemberCommand::List => list(ctx).await,
        MemberCommand::Promote(args) => promote(args, ctx).await,
    }
}

/// The one argument, a member id in hex, or etcdctl's complaint.
fn member_id(args: &[String]) -> Result<u64, CtlError> {
    let [arg] = args else {
        return Err(CtlError::bad_args("member ID is not provided"));
    };
    parse_uint(arg, 16)
        .map_err(|e| CtlError::bad_args(format!("bad member ID arg ({e}), expecting ID in Hex")))
}

/// `--peer-urls` split as etcdctl splits it (an empty part stays).
fn peer_urls(flag: &str) -> Result<Vec<String>, CtlError> {
    if flag.is_empty() {
        return Err(CtlError::bad_args("member peer urls not provided"));
    }
    Ok(flag.split(',').map(str::to_string).collect())
}

/// The new member's name, or etcdctl's complaint, which points at URLs
/// given as arguments instead of with `--peer-urls`.
fn member_name(args: &[String]) -> Result<&str, CtlError> {
    match args {
        [] => Err(CtlError::bad_args("member name not provided")),
        [name] => Ok(name),
        _ => {
            let mut complaint = String::from("too many arguments");
            for arg in args.iter().filter(|a| a.to_lowercase().starts_with("http")) {
                complaint.push_str(&format!(", did you mean --peer-urls={arg}"));
            }
            Err(CtlError::bad_args(complaint))
        }
    }
}

async fn add(args: AddArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let name = member_name(&args.args)?;
    let urls = peer_urls(&args.peer_urls)?;
    let options = args.learner.then(|| MemberAddOptions::new().with_is_learner());
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut cluster = client.cluster_client();
            let (urls, options) = (urls.clone(), options.clone());
            async move { cluster.member_add(urls, options).await }
        })
        .await?
        .0;
    let mut out = ctx.stdout();
    ctx.printer.member_add(&mut out, &resp)?;
    flush(&mut out)?;
    if ctx.printer.format != Format::Simple {
        return Ok(());
    }
    let members = members_seen_by(&client, ctx, member_id_of(&resp.header)).await?;
    let new_id = resp.member.as_ref().map_or(0, |m| m.id);
    let initial_cluster: Vec<String> = members
        .iter()
        .flat_map(|m| {
            // The new member has no name until it starts: use the one given.
            let member_name = if m.id == new_id { name } else { m.name.as_str() };
            m.peer_ur_ls.iter().map(move |url| format!("{member_name}={url}"))
        })
        .collect();
    ctx.printer.member_add_env(&mut out, name, &initial_cluster, &args.peer_urls)?;
    flush(&mut out)
}

fn member_id_of(header: &Option<PbResponseHeader>) -> u64 {
    header.as_ref().map_or(0, |h| h.member_id)
}

/// The member list as the member that answered `member add` sees it, as
/// etcdctl gets it: another member may not have applied the change yet,
/// so after an answer from one, a quorum read picks the member to wait for.
async fn members_seen_by(client: &Client, ctx: &Ctx, mut member: u64) -> Result<Vec<PbMember>, CtlError> {
    let search = async {
        loop {
            let resp = ctx
                .conn
                .call(|| {
                    let mut cluster = client.cluster_client();
                    async move { cluster.member_list().await }
                })
                .await?
                .0;
            if member_id_of(&resp.header) == member {
                return Ok(resp.members);
            }
            let got = ctx
                .conn
                .call(|| {
                    let mut kv = client.kv_client();
                    async move { kv.get("_", None).await }
                })
                .await
                // etcdctl reports the member list's error here, which is nil.
                .map_err(|_| CtlError::error("<nil>"))?;
            member = member_id_of(&got.0.header);
        }
    };
    // One command timeout for the whole search, as etcdctl has one context.
    tokio::time::timeout(ctx.conn.command_timeout, search).await.map_err(|_| CtlError::deadline_exceeded())?
}

async fn remove(args: IdArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let id = member_id(&args.args)?;
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut cluster = client.cluster_client();
            async move { cluster.member_remove(id).await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.member_remove(&mut out, id, &resp.0)?;
    flush(&mut out)
}

async fn update(args: UpdateArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let id = member_id(&args.args)?;
    let urls = peer_urls(&args.peer_urls)?;
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut cluster = client.cluster_client();
            let urls = urls.clone();
            async move { cluster.member_update(id, urls).await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.member_update(&mut out, id, &resp.0)?;
    flush(&mut out)
}

async fn promote(args: IdArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let id = member_id(&args.args)?;
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut cluster = client.cluster_client();
            async move { cluster.member_promote(id).await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.member_promote(&mut out, id, &resp.0)?;
    flush(&mut out)
}

async fn list(ctx: &Ctx) -> Result<(), CtlError> {
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut cluster = client.cluster_client();
            async move { cluster.member_list().await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.member_list(&mut out, &resp.0)?;
    flush(&mut out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_unsigned_hex() {
        assert_eq!(member_id(&["bdae9bbc11dd390d".into()]), Ok(0xbdae9bbc11dd390d));
        let err = member_id(&["zz".into()]).expect_err("not hex");
        assert_eq!(
            err.message,
            r#"bad member ID arg (strconv.ParseUint: parsing "zz": invalid syntax), expecting ID in Hex"#
        );
        assert_eq!(member_id(&[]).expect_err("no id").message, "member ID is not provided");
    }

    #[test]
    fn urls_as_arguments_get_a_hint() {
        let args: Vec<String> = vec!["new".into(), "http://10.0.0.1:2380".into()];
        assert_eq!(
            member_name(&args).expect_err("two names").message,
            "too many arguments, did you mean --peer-urls=http://10.0.0.1:2380"
        );
        assert_eq!(member_name(&[]).expect_err("no name").message, "member name not provided");
    }
}
