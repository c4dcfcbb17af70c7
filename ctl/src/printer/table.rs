//! The `table` format, drawn as olekukonko/tablewriter draws etcdctl's
//! tables: upper-case centred headers, right-aligned cells. The rows are
//! shared with the `simple` format, which joins them with ", ".

use std::io::{self, Write};

use etcd_client::proto::PbMemberListResponse;

use super::{EpHashKv, EpHealth, EpStatus};
use crate::gofmt::humanize_bytes;

type Table = (Vec<&'static str>, Vec<Vec<String>>);

pub fn member_list(r: &PbMemberListResponse) -> Table {
    let header = vec!["ID", "Status", "Name", "Peer Addrs", "Client Addrs", "Is Learner"];
    let rows = r
        .members
        .iter()
        .map(|m| {
            let status = if m.name.is_empty() { "unstarted" } else { "started" };
            vec![
                format!("{:x}", m.id),
                status.to_string(),
                m.name.clone(),
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(","),
                m.is_learner.to_string(),
            ]
        })
        .collect();
    (header, rows)
}

pub fn endpoint_status(list: &[EpStatus]) -> Table {
    let header = vec![
        "endpoint",
        "ID",
        "version",
        "db size",
        "is leader",
        "is learner",
        "raft term",
        "raft index",
        "raft applied index",
        "errors",
    ];
    let rows = list
        .iter()
        .map(|ep| {
            let s = &ep.status;
            let member_id = s.header.as_ref().map(|h| h.member_id).unwrap_or_default();
            vec![
                ep.endpoint.clone(),
                format!("{member_id:x}"),
                s.version.clone(),
                humanize_bytes(u64::try_from(s.db_size).unwrap_or_default()),
                (s.leader == member_id).to_string(),
                s.is_learner.to_string(),
                s.raft_term.to_string(),
                s.raft_index.to_string(),
                s.raft_applied_index.to_string(),
                s.errors.join(", "),
            ]
        })
        .collect();
    (header, rows)
}

pub fn endpoint_hashkv(list: &[EpHashKv]) -> Table {
    let header = vec!["endpoint", "hash"];
    let rows = list.iter().map(|h| vec![h.endpoint.clone(), h.hash_kv.hash.to_string()]).collect();
    (header, rows)
}

pub fn endpoint_health(list: &[EpHealth]) -> Table {
    let header = vec!["endpoint", "health", "took", "error"];
    let rows = list
        .iter()
        .map(|h| vec![h.endpoint.clone(), h.health.to_string(), h.took.clone(), h.error.clone()])
        .collect();
    (header, rows)
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Draws the table. Cells wider than tablewriter's 30-column wrap limit are
/// not wrapped here; etcdctl's cells (ids, URLs, numbers) never need it.
pub fn render(w: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let header: Vec<String> = header.iter().map(|h| h.replace(['_', '.'], " ").trim().to_uppercase()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(wd) = widths.get_mut(i) {
                *wd = (*wd).max(width(cell));
            }
        }
    }
    let border: String = widths.iter().fold(String::from("+"), |mut acc, wd| {
        acc.push_str(&"-".repeat(wd + 2));
        acc.push('+');
        acc
    });
    writeln!(w, "{border}")?;
    let mut line = String::from("|");
    for (h, wd) in header.iter().zip(&widths) {
        let gap = wd - width(h);
        let left = gap / 2;
        line.push_str(&format!(" {}{}{} |", " ".repeat(left), h, " ".repeat(gap - left)));
    }
    writeln!(w, "{line}")?;
    writeln!(w, "{border}")?;
    for row in rows {
        let mut line = String::from("|");
        for (cell, wd) in row.iter().zip(&widths) {
            line.push_str(&format!(" {}{} |", " ".repeat(wd - width(cell)), cell));
        }
        writeln!(w, "{line}")?;
    }
    writeln!(w, "{border}")
}
