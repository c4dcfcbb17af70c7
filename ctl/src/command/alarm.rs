//! `alarm list | disarm`: etcdctl 3.4's. `disarm` lists the alarms, then
//! deactivates each (member, type), as clientv3's AlarmDisarm does, and
//! prints what it deactivated. Each alarm prints as etcd prints an
//! AlarmMember: `memberID:<decimal id> alarm:<TYPE> `.

use std::io::Write;

use clap::Subcommand;
use etcd_client::{AlarmAction, AlarmMember, AlarmOptions, AlarmType};

use super::{Ctx, flush};
use crate::error::CtlError;
use crate::printer::Format;

#[derive(Subcommand, Debug)]
pub enum AlarmCommand {
    /// Lists all alarms
    List,
    /// Disarms all alarms
    Disarm,
}

fn line(a: &AlarmMember) -> String {
    let name = match a.alarm() {
        AlarmType::Nospace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
        AlarmType::None => "NONE",
    };
    format!("memberID:{} alarm:{name} ", a.member_id())
}

async fn call(ctx: &Ctx, action: AlarmAction, alarm: AlarmType, member: u64) -> Result<Vec<AlarmMember>, CtlError> {
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut maintenance = client.maintenance_client();
            let mut options = AlarmOptions::new();
            options.with_member(member);
            async move { maintenance.alarm(action, alarm, Some(options)).await }
        })
        .await?;
    Ok(resp.alarms().to_vec())
}

pub async fn run(cmd: AlarmCommand, ctx: &Ctx) -> Result<(), CtlError> {
    if ctx.printer.format != Format::Simple {
        return Err(CtlError::bad_feature("raftkvctl alarm prints the simple format only"));
    }
    let listed = call(ctx, AlarmAction::Get, AlarmType::None, 0).await?;
    let shown = match cmd {
        AlarmCommand::List => listed,
        AlarmCommand::Disarm => {
            let mut disarmed = Vec::new();
            for a in listed {
                disarmed.extend(call(ctx, AlarmAction::Deactivate, a.alarm(), a.member_id()).await?);
            }
            disarmed
        }
    };
    let mut out = ctx.stdout();
    for a in &shown {
        writeln!(out, "{}", line(a))?;
    }
    flush(&mut out)
}
