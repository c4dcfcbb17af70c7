//! Multi-member clusters of real processes on loopback. Each scenario runs
//! on a fresh cluster of every selected flavor, real etcd 3.4 first (which
//! proves the scenario's expectations) and then raftkv (which is held to
//! them); `RAFTKV_E2E_FLAVORS=etcd` checks a scenario against etcd alone.
//!
//! - Failover: the leader of 3 and of 5 members is killed with SIGKILL under
//!   writes from clients of every member; the survivors agree on a new
//!   leader within 3 election timeouts, lose no acknowledged write, and the
//!   killed member has every write once restarted; HashKV agrees.
//! - A member cut off its peers while thousands of writes pass
//!   `--snapshot-count` (and etcd's 5000 catch-up entries, so etcd must send
//!   it a snapshot) holds every key once healed.
//! - Membership: a learner joins, catches up and is promoted; a follower
//!   and then the leader are removed and the rest keep serving.
//! - All members stopped with SIGTERM and started again keep the data.
//! - A put through one follower is seen by a linearizable get through
//!   another as soon as the put returns.
//! - etcdctl 3.4's member and endpoint commands against the cluster.
//!
//! Reads that check what a member holds are serializable: answered from that
//! member's own state.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::{Client, GetOptions};
use raftkv_tests::acked::{self, Ack};
use raftkv_tests::binaries::ETCDCTL;
use raftkv_tests::with_etcd;
use raftkv_tests::cluster::{
    ELECTION_TIMEOUT, Member, UNHEALTHY, eventually, for_each_flavor, retry_while,
};
use raftkv_tests::proxy::Network;
use raftkv_tests::server::Flavor;
use raftkv_tests::{Cluster, describe};
use regex::Regex;

/// How long a member may take to hold what the cluster committed.
const CATCH_UP: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- failover

/// Writers per member during the failover scenario.
const WRITERS_PER_MEMBER: usize = 2;

async fn leader_kill9_loses_no_acknowledged_write(cluster: &mut Cluster) -> anyhow::Result<()> {
    let old = cluster.leader().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let fault = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in cluster.members() {
        for w in 0..WRITERS_PER_MEMBER {
            let writer = acked::put_until(
                cluster.client(i).await?,
                format!("m{i}/w{w}"),
                stop.clone(),
                fault.clone(),
            );
            writers.push(tokio::spawn(writer));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    fault.store(true, Ordering::SeqCst);
    let killed_at = Instant::now();
    cluster.kill9(old)?;
    // raftkv is held to 3 election timeouts. etcd, the reference for the
    // scenario's behaviour, only gets a note past it: on this loaded 2-core
    // machine it has been seen to take 3.01 s with 5 members.
    let bound = ELECTION_TIMEOUT * 3;
    let give_up = match cluster.flavor() {
        Flavor::Raftkv => bound,
        Flavor::Etcd => ELECTION_TIMEOUT * 10,
    };
    let (new, elected_after) = loop {
        let agreed = cluster.agreed_leader().await;
        let elapsed = killed_at.elapsed();
        match agreed {
            Ok(new) if new != old => break (new, elapsed),
            _ if elapsed > give_up => bail!(
                "no new leader on all survivors {elapsed:?} after killing leader m{old} \
                 (bound {give_up:?}); last: {}",
                agreed.map_or_else(|e| format!("{e:#}"), |l| format!("still m{l}"))
            ),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    if elected_after > bound {
        eprintln!(
            "note: {} took {elected_after:?} to elect a new leader, over the {bound:?} raftkv is held to",
            cluster.flavor().name()
        );
    }
    let elected_at = killed_at + elected_after;
    eprintln!(
        "{}: m{new} leads {elected_after:?} after m{old} was killed",
        cluster.flavor().name()
    );

    // Writes work through every survivor under the new leader, while the
    // writers go on. A writer may still wait for a put it sent to the dead
    // leader, until the request times out.
    let mut acks: Vec<Ack> = Vec::new();
    for i in cluster.running() {
        let client = cluster.client(i).await?;
        let prefix = format!("after-failover/m{i}");
        let put = eventually(CATCH_UP, async || {
            put_keys(client.clone(), prefix.clone(), 1).await
        })
        .await
        .with_context(|| format!("put through m{i} after m{new} was elected"))?;
        acks.extend(put);
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        acks.extend(writer.await.context("a writer task panicked")??);
    }
    eprintln!(
        "{}: {} acknowledged puts, {} after the election",
        cluster.flavor().name(),
        acks.len(),
        acks.iter().filter(|a| a.at > elected_at).count()
    );

    for i in cluster.running() {
        holds_all(cluster, i, &acks).await?;
    }
    cluster.restart(old).await?;
    holds_all(cluster, old, &acks)
        .await
        .context("the restarted leader")?;
    hashes_agree(cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_fail_over_without_losing_acknowledged_writes() -> anyhow::Result<()> {
    for_each_flavor(3, &[], leader_kill9_loses_no_acknowledged_write).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_fail_over_without_losing_acknowledged_writes() -> anyhow::Result<()> {
    for_each_flavor(5, &[], leader_kill9_loses_no_acknowledged_write).await
}

// ----------------------------------------------------------- cut and heal

/// Past `--snapshot-count 100` and past the 5000 entries etcd keeps for
/// slow followers, so a member that missed them all needs a snapshot.
const KEYS_WHILE_CUT: usize = 6000;
const CUT_WRITERS: usize = 16;

async fn cut_member_catches_up(cluster: &mut Cluster) -> anyhow::Result<()> {
    let cut = *cluster.followers().await?.first().context("no follower")?;
    cluster.cut(cut);

    let mut writers = Vec::new();
    let reachable: Vec<usize> = cluster
        .members()
        .into_iter()
        .filter(|&i| i != cut)
        .collect();
    for w in 0..CUT_WRITERS {
        let client = cluster.client(reachable[w % reachable.len()]).await?;
        let prefix = format!("cut/w{w:02}");
        writers.push(tokio::spawn(put_keys(
            client,
            prefix,
            KEYS_WHILE_CUT / CUT_WRITERS,
        )));
    }
    let mut acks = Vec::new();
    for writer in writers {
        acks.extend(writer.await.context("a writer task panicked")??);
    }

    // Precondition: the cut held. A member that kept receiving would prove
    // nothing about catching up.
    let mut client = cluster.client(cut).await?;
    let (_, store) = acked::whole_store(&mut client, true).await?;
    ensure!(
        store.len() < acks.len(),
        "m{cut} holds {} keys while cut off, all {} written: the cut did not isolate it",
        store.len(),
        acks.len()
    );

    cluster.heal(cut);
    holds_all(cluster, cut, &acks).await?;
    hashes_agree(cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cut_off_past_the_snapshot_count_catches_up() -> anyhow::Result<()> {
    for_each_flavor(3, &["--snapshot-count", "100"], cut_member_catches_up).await
}

// -------------------------------------------------------------- membership

const PROMOTE_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";

async fn learner_joins_and_members_leave(cluster: &mut Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let mut acks = put_keys(cluster.client(leader).await?, "before-learner".into(), 200).await?;

    let learner = cluster.add_member("m3", true).await?;
    let learner_id = cluster.member(learner).id();
    let listed = member_list(cluster).await?;
    ensure!(
        listed.get(&learner_id) == Some(&true) && listed.len() == 4,
        "MemberList after adding m3 as learner (id -> learner): {listed:x?}"
    );
    holds_all(cluster, learner, &acks)
        .await
        .context("the learner")?;
    promote(cluster, learner_id).await?;
    let listed = member_list(cluster).await?;
    ensure!(
        listed.len() == 4 && listed.values().all(|learner| !learner),
        "MemberList after promoting m3: {listed:x?}"
    );

    let follower = follower_besides(cluster, learner).await?;
    cluster.remove_member(follower).await?;
    let listed = member_list(cluster).await?;
    ensure!(
        listed.len() == 3 && !listed.contains_key(&cluster.member(follower).id()),
        "MemberList after removing m{follower}: {listed:x?}"
    );

    let old_leader = cluster.leader().await?;
    cluster.remove_member(old_leader).await?;
    let new_leader = cluster.leader().await?;
    ensure!(
        new_leader != old_leader,
        "m{old_leader} was removed but is still reported as leader"
    );
    let listed = member_list(cluster).await?;
    ensure!(
        listed.len() == 2 && !listed.contains_key(&cluster.member(old_leader).id()),
        "MemberList after removing the leader m{old_leader}: {listed:x?}"
    );

    for i in cluster.members() {
        acks.extend(put_keys(cluster.client(i).await?, format!("after-removal/m{i}"), 20).await?);
    }
    for i in cluster.members() {
        holds_all(cluster, i, &acks).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_is_promoted_then_a_follower_and_the_leader_are_removed() -> anyhow::Result<()> {
    for_each_flavor(3, &[], learner_joins_and_members_leave).await
}

/// A member removed while its clients hold watch streams open must still
/// exit by itself (a graceful stop waits on open streams, so it needs a
/// deadline, as etcd's stopServers has): found by the `replace` fault runs.
async fn removed_member_exits_with_watches_open(cluster: &mut Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let leaving = follower_besides(cluster, leader).await?;
    let mut client = cluster.client(leaving).await?;
    let mut watches = Vec::new();
    for i in 0..3 {
        watches.push(client.watch(format!("open/{i}"), None).await?);
    }
    let id = cluster.member(leaving).id();
    let mut leader_client = cluster.client(leader).await?;
    retry_while(UNHEALTHY, Duration::from_secs(30), async || Ok(leader_client.member_remove(id).await?)).await?;
    let exited = cluster.exit_within(leaving, Duration::from_secs(20)).await?;
    ensure!(exited.is_some(), "m{leaving} was removed with watch streams open and still runs 20 s later");
    cluster.removed(leaving).await?;
    drop(watches);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_removed_with_watches_open_exits_by_itself() -> anyhow::Result<()> {
    for_each_flavor(3, &[], removed_member_exits_with_watches_open).await
}

/// MemberPromote, retried while the learner is not yet in sync.
async fn promote(cluster: &Cluster, id: u64) -> anyhow::Result<()> {
    let mut client = cluster.client(cluster.leader().await?).await?;
    retry_while(PROMOTE_NOT_READY, CATCH_UP, async || {
        Ok(client.member_promote(id).await?)
    })
    .await
    .with_context(|| format!("MemberPromote {id:x}"))
    .map(drop)
}

/// A follower other than member `besides`.
async fn follower_besides(cluster: &Cluster, besides: usize) -> anyhow::Result<usize> {
    cluster
        .followers()
        .await?
        .into_iter()
        .find(|&i| i != besides)
        .with_context(|| format!("no follower but m{besides}"))
}

/// Member id -> is learner, as the leader lists them.
async fn member_list(cluster: &Cluster) -> anyhow::Result<BTreeMap<u64, bool>> {
    let mut client = cluster.client(cluster.leader().await?).await?;
    let listed = client.member_list().await?;
    Ok(listed
        .members()
        .iter()
        .map(|m| (m.id(), m.is_learner()))
        .collect())
}

// ----------------------------------------------------------- stop, start

async fn full_restart_keeps_data(cluster: &mut Cluster) -> anyhow::Result<()> {
    let mut acks = Vec::new();
    for i in cluster.members() {
        acks.extend(put_keys(cluster.client(i).await?, format!("m{i}"), 100).await?);
    }
    cluster.stop_all().await?;
    cluster.start_all().await?;
    for i in cluster.members() {
        holds_all(cluster, i, &acks).await?;
    }
    hashes_agree(cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_stopped_and_started_keeps_the_data() -> anyhow::Result<()> {
    for_each_flavor(3, &[], full_restart_keeps_data).await
}

// ------------------------------------------------------------- followers

async fn follower_put_is_seen_by_another_follower(cluster: &mut Cluster) -> anyhow::Result<()> {
    let followers = cluster.followers().await?;
    let [writer, reader] = followers[..] else {
        bail!("expected two followers, got {followers:?}");
    };
    let mut writer = cluster.client(writer).await?;
    let mut reader = cluster.client(reader).await?;
    for i in 0..100 {
        let value = i.to_string();
        let put = writer.put("follower-key", value.as_str(), None).await?;
        let got = reader.get("follower-key", None).await?;
        let kv = got
            .kvs()
            .first()
            .context("the key put through a follower is missing")?;
        ensure!(
            kv.value() == value.as_bytes() && kv.mod_revision() == describe::revision(put.header()),
            "put #{i} returned at revision {}, then the other follower read {}",
            describe::revision(put.header()),
            describe::kv(kv)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_through_a_follower_is_read_linearizably_through_another() -> anyhow::Result<()> {
    for_each_flavor(3, &[], follower_put_is_seen_by_another_follower).await
}

// ---------------------------------------------------------------- etcdctl

/// `etcdctl <args>` against the voting members (a learner refuses most
/// requests, so an operator leaves it out of `--endpoints`); its stdout, or
/// an error with its stderr unless it exits 0.
async fn etcdctl(
    cluster: &Cluster,
    learner: Option<usize>,
    args: &[&str],
) -> anyhow::Result<String> {
    let voters: Vec<String> = cluster
        .members()
        .into_iter()
        .filter(|&i| Some(i) != learner)
        .map(|i| cluster.member(i).endpoint())
        .collect();
    let output = tokio::process::Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(voters.join(","))
        .args(args)
        .output()
        .await
        .context("cannot run etcdctl")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "etcdctl {} exited with {}:\n{stdout}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// One line per member in the cluster, as `line` writes it, sorted.
fn member_lines(cluster: &Cluster, line: impl Fn(usize, &Member) -> String) -> Vec<String> {
    let mut lines: Vec<String> = cluster
        .members()
        .into_iter()
        .map(|i| line(i, cluster.member(i)))
        .collect();
    lines.sort();
    lines
}

/// `member list` lines as etcdctl prints them: `id, started, name, peer
/// URL, client URL, is learner`, sorted.
fn expected_member_list(cluster: &Cluster, learner: Option<usize>) -> Vec<String> {
    member_lines(cluster, |i, m| {
        format!(
            "{:x}, started, {}, {}, {}, {}",
            m.id(),
            m.name(),
            m.server().peer_url(),
            m.endpoint(),
            learner == Some(i)
        )
    })
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The deterministic columns of `endpoint status --cluster -w table`, one
/// `endpoint id leader learner` line per member, sorted.
fn status_table_rows(table: &str) -> anyhow::Result<Vec<String>> {
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let (header, body) = rows.split_first().context("no table in the output")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("no {name} column in {header:?}"))
    };
    let columns = [
        column("ENDPOINT")?,
        column("ID")?,
        column("IS LEADER")?,
        column("IS LEARNER")?,
    ];
    let mut lines: Vec<String> = body
        .iter()
        .map(|row| {
            columns
                .map(|c| row.get(c).copied().unwrap_or("?"))
                .join(" ")
        })
        .collect();
    lines.sort();
    Ok(lines)
}

fn expected_status_rows(cluster: &Cluster, leader: usize, learner: Option<usize>) -> Vec<String> {
    member_lines(cluster, |i, m| {
        format!(
            "{} {:x} {} {}",
            m.endpoint(),
            m.id(),
            i == leader,
            learner == Some(i)
        )
    })
}

async fn etcdctl_manages_the_cluster(cluster: &mut Cluster) -> anyhow::Result<()> {
    etcdctl_reports_the_members(cluster, None, "at the start").await?;

    let joining = cluster.prepare_member()?;
    let peer_urls = format!("--peer-urls={}", joining.peer_url);
    let added = retry_while(UNHEALTHY, CATCH_UP, async || {
        etcdctl(
            cluster,
            None,
            &["member", "add", "m3", &peer_urls, "--learner"],
        )
        .await
    })
    .await?;
    let field = |name: &str| {
        Regex::new(&format!(r#"(?m)^{name}="(.*)"$"#))
            .ok()
            .and_then(|re| re.captures(&added).map(|c| c[1].to_owned()))
            .with_context(|| format!("no {name} in member add's output:\n{added}"))
    };
    let new_id = Regex::new(r"Member\s+([0-9a-f]+) added to cluster")?
        .captures(&added)
        .and_then(|c| u64::from_str_radix(&c[1], 16).ok())
        .with_context(|| format!("no member id in member add's output:\n{added}"))?;
    let initial_cluster = field("ETCD_INITIAL_CLUSTER")?;
    ensure!(
        field("ETCD_NAME")? == "m3"
            && field("ETCD_INITIAL_ADVERTISE_PEER_URLS")? == joining.peer_url
            && field("ETCD_INITIAL_CLUSTER_STATE")? == "existing",
        "member add printed:\n{added}"
    );
    let mut expected_initial: BTreeSet<String> = member_lines(cluster, |_, m| {
        format!("{}={}", m.name(), m.server().peer_url())
    })
    .into_iter()
    .collect();
    expected_initial.insert(format!("m3={}", joining.peer_url));
    ensure!(
        initial_cluster
            .split(',')
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
            == expected_initial,
        "ETCD_INITIAL_CLUSTER={initial_cluster}, expected the members {expected_initial:?}"
    );
    let learner = cluster.join(joining, "m3", &initial_cluster).await?;
    ensure!(
        cluster.member(learner).id() == new_id,
        "m3 answers Status as {:x}, member add said {new_id:x}",
        cluster.member(learner).id()
    );

    etcdctl_reports_the_members(cluster, Some(learner), "with a learner").await?;

    etcdctl_member(
        cluster,
        Some(learner),
        "promote",
        new_id,
        "promoted in",
        PROMOTE_NOT_READY,
    )
    .await?;
    let follower = follower_besides(cluster, learner).await?;
    let follower_id = cluster.member(follower).id();
    etcdctl_member(
        cluster,
        None,
        "remove",
        follower_id,
        "removed from",
        UNHEALTHY,
    )
    .await?;
    cluster.removed(follower).await?;

    etcdctl_reports_the_members(cluster, None, "after promote and remove").await
}

/// `member list` and `endpoint status --cluster -w table` show every
/// member of the cluster, the leader and the learner (if any) as such.
async fn etcdctl_reports_the_members(
    cluster: &Cluster,
    learner: Option<usize>,
    when: &str,
) -> anyhow::Result<()> {
    let listed = etcdctl(cluster, learner, &["member", "list"]).await?;
    let expected = expected_member_list(cluster, learner);
    ensure!(
        sorted_lines(&listed) == expected,
        "member list {when}:\n{listed}\nexpected:\n{}",
        expected.join("\n")
    );
    let leader = cluster.leader().await?;
    let table = etcdctl(
        cluster,
        learner,
        &["endpoint", "status", "--cluster", "-w", "table"],
    )
    .await?;
    let expected = expected_status_rows(cluster, leader, learner);
    ensure!(
        status_table_rows(&table)? == expected,
        "endpoint status --cluster {when}:\n{table}\nexpected (endpoint id leader learner):\n{}",
        expected.join("\n")
    );
    Ok(())
}

/// `etcdctl member <verb> <id>`, retried while it fails with `transient`;
/// it must print `Member <id> <printed> cluster <cluster id>`.
async fn etcdctl_member(
    cluster: &Cluster,
    learner: Option<usize>,
    verb: &str,
    id: u64,
    printed: &str,
    transient: &str,
) -> anyhow::Result<()> {
    let id = format!("{id:x}");
    let output = retry_while(transient, CATCH_UP, async || {
        etcdctl(cluster, learner, &["member", verb, &id]).await
    })
    .await?;
    let expected = Regex::new(&format!(r"^Member\s+{id} {printed} cluster\s+[0-9a-f]+\n$"))?;
    ensure!(
        expected.is_match(&output),
        "member {verb} {id} printed: {output}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_lists_adds_promotes_and_removes_members() -> anyhow::Result<()> {
    // etcdctl drives both flavors: it comes with real etcd.
    if !with_etcd("etcdctl_lists_adds_promotes_and_removes_members")? {
        return Ok(());
    }
    for_each_flavor(3, &[], etcdctl_manages_the_cluster).await
}

// ------------------------------------------------------------------ proxy

/// An echo server on loopback; its port.
fn echo_server() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Whether one round trip over `stream` works.
fn echoes(stream: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 4];
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_ok()
        && stream.write_all(b"ping").is_ok()
        && stream.read_exact(&mut buf).is_ok()
        && &buf == b"ping"
}

fn connect_echoes(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| echoes(&mut s))
}

/// The harness's own check: cutting a member drops and refuses both the
/// connections into it and those its process dials to others. This test
/// process plays the cut member.
#[test]
fn the_proxy_cuts_a_member_off_both_ways() -> anyhow::Result<()> {
    let network = Network::new()?;
    let (me, my_port) = network.add_link(echo_server()?)?;
    let (other, other_port) = network.add_link(echo_server()?)?;
    network.set_pid(me, Some(std::process::id()));
    let mut inbound = std::net::TcpStream::connect(("127.0.0.1", my_port))?;
    let mut outbound = std::net::TcpStream::connect(("127.0.0.1", other_port))?;
    ensure!(
        echoes(&mut inbound) && echoes(&mut outbound),
        "the proxy does not forward"
    );

    network.cut(me);
    ensure!(
        !echoes(&mut inbound),
        "a connection into the cut member survived"
    );
    ensure!(
        !echoes(&mut outbound),
        "a connection the cut member dialed survived"
    );
    ensure!(
        !connect_echoes(my_port),
        "a new connection into the cut member got through"
    );
    ensure!(
        !connect_echoes(other_port),
        "a new connection from the cut member got through"
    );

    network.heal(me);
    ensure!(
        connect_echoes(my_port) && connect_echoes(other_port),
        "heal did not restore traffic"
    );
    // A cut of another member leaves this one's outbound traffic alone,
    // except into the member cut.
    network.cut(other);
    ensure!(
        connect_echoes(my_port),
        "cutting another member cut this one"
    );
    Ok(())
}

// ----------------------------------------------------------------- helpers

/// `count` sequential puts of `{prefix}/{i:08}` = `i`; every one must
/// succeed.
async fn put_keys(mut client: Client, prefix: String, count: usize) -> anyhow::Result<Vec<Ack>> {
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{prefix}/{i:08}");
        let value = i.to_string();
        let resp = client
            .put(key.as_str(), value.as_str(), None)
            .await
            .with_context(|| format!("put {key}"))?;
        acks.push(Ack {
            key,
            value,
            revision: describe::revision(resp.header()),
            at: Instant::now(),
        });
    }
    Ok(acks)
}

/// Waits until member `i`'s own state (serializable reads) holds every
/// acknowledged put with its value at its revision.
async fn holds_all(cluster: &Cluster, i: usize, acks: &[Ack]) -> anyhow::Result<()> {
    let mut client = cluster.client(i).await?;
    eventually(CATCH_UP, async || {
        let (_, store) = acked::whole_store(&mut client, true).await?;
        acked::all_present(&store, acks)
    })
    .await
    .with_context(|| format!("m{i} does not hold every acknowledged put"))
}

/// HashKV at the cluster's current revision is the same on every running
/// member, once each has applied that revision.
async fn hashes_agree(cluster: &Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let current = cluster
        .client(leader)
        .await?
        .get("hash-probe", None)
        .await?;
    let revision = describe::revision(current.header());
    let mut hashes = Vec::new();
    for i in cluster.running() {
        let mut client = cluster.client(i).await?;
        eventually(CATCH_UP, async || {
            let local = client
                .get("hash-probe", Some(GetOptions::new().with_serializable()))
                .await?;
            let applied = describe::revision(local.header());
            ensure!(
                applied >= revision,
                "m{i} is at revision {applied}, not {revision}"
            );
            Ok(())
        })
        .await?;
        let hash = client.hash_kv(revision).await?;
        hashes.push((i, hash.hash()));
    }
    ensure!(
        hashes.windows(2).all(|w| w[0].1 == w[1].1),
        "HashKV at revision {revision} differs between members (index, hash): {hashes:?}"
    );
    Ok(())
}

/// A follower killed and restarted while nothing is written serves again
/// without waiting for a write: before this was fixed, raftkv's restarted
/// follower took its commit index only from new raft state, and an idle
/// leader's heartbeats carry the same commit it had persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_restarted_in_an_idle_cluster_serves_again() -> anyhow::Result<()> {
    for_each_flavor(3, &[], async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        let mut c = cluster.client(leader).await?;
        c.put("idle", "before the restart", None).await?;
        let follower = (leader + 1) % 3;
        eventually(Duration::from_secs(10), async || {
            let r = cluster.client(follower).await?.get("idle", Some(GetOptions::new().with_serializable())).await?;
            ensure!(r.count() == 1, "the follower has not applied the put");
            Ok(())
        })
        .await?;
        cluster.kill9(follower)?;
        cluster.restart(follower).await?;
        let r = cluster.client(follower).await?.get("idle", Some(GetOptions::new().with_serializable())).await?;
        ensure!(r.count() == 1, "the restarted follower lost the put");
        Ok(())
    })
    .await
}

// ------------------------------------------------------ quorum-loss recovery

/// Two of three members lost for good (processes and disks): the survivor,
/// restarted with `--force-new-cluster`, is a one-member cluster that holds
/// every acknowledged write and takes new ones; the cluster grows back to
/// three by MemberAdd, and every member agrees on the content. etcd's
/// disaster-recovery procedure, on both flavors.
async fn force_new_cluster_recovers(cluster: &mut Cluster) -> anyhow::Result<()> {
    recover_with_force(cluster, false).await
}

/// With `killed`, the survivor is killed (-9) rather than stopped.
async fn recover_with_force(cluster: &mut Cluster, killed: bool) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let mut acks = put_keys(cluster.client(leader).await?, "before".into(), 200).await?;
    let survivor = *cluster.followers().await?.first().context("no follower")?;
    let lost: Vec<usize> = cluster.members().into_iter().filter(|&i| i != survivor).collect();
    // The survivor must hold everything before the others go, as a member
    // that stopped last in a real loss might not.
    holds_all(cluster, survivor, &acks).await?;
    for &i in &lost {
        cluster.lose(i)?;
    }
    // Stopped (SIGTERM), as an operator restarts it with the flag. Killed
    // (-9) instead, etcd may drop the last writes the survivor had applied
    // but not yet persisted as committed (seen: the last put of 200):
    // --force-new-cluster discards the entries past the persisted commit.
    if killed {
        cluster.kill9(survivor)?;
    } else {
        cluster.stop(survivor).await?;
    }
    cluster.restart_with(survivor, &["--force-new-cluster"]).await?;

    let listed = member_list(cluster).await?;
    ensure!(
        listed.len() == 1 && listed.contains_key(&cluster.member(survivor).id()),
        "MemberList after --force-new-cluster: {listed:x?}"
    );
    holds_all(cluster, survivor, &acks).await.context("the survivor after --force-new-cluster")?;
    acks.extend(put_keys(cluster.client(survivor).await?, "forced".into(), 50).await?);

    for name in ["m3", "m4"] {
        let added = cluster.add_member(name, false).await?;
        holds_all(cluster, added, &acks).await.with_context(|| format!("{name}, added after the recovery"))?;
    }
    ensure!(member_list(cluster).await?.len() == 3, "the cluster did not grow back to 3 members");
    acks.extend(put_keys(cluster.client(cluster.leader().await?).await?, "regrown".into(), 50).await?);
    for i in cluster.members() {
        holds_all(cluster, i, &acks).await?;
    }
    hashes_agree(cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_survivor_forced_into_a_new_cluster_keeps_the_data_and_regrows() -> anyhow::Result<()> {
    for_each_flavor(3, &[], force_new_cluster_recovers).await
}

/// The same with the survivor killed (-9): raftkv keeps every write the
/// survivor had applied, its commit index being written with what it
/// applied (etcd can drop the last ones, see above: raftkv only).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_survivor_killed_then_forced_into_a_new_cluster_loses_nothing_it_applied() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    recover_with_force(&mut cluster, true).await.with_context(|| cluster.log_tails(30))
}

// ------------------------------------------------------ require leader

/// clientv3's `WithRequireLeader` (gRPC metadata `hasleader=true`, on
/// kube-apiserver's watches): a member that has lost its quorum ends such
/// a watch with "etcdserver: no leader" after a few election timeouts, so
/// that the client moves to a member that has one, and refuses new
/// requests that carry it at once; a watch without it stays open.
async fn require_leader_ends_watches_without_a_leader(cluster: &mut Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let stay = follower_besides(cluster, leader).await?;
    let endpoint = cluster.member(stay).endpoint();
    let requiring = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut strict = Client::connect([endpoint.clone()], Some(requiring)).await?;
    let mut lax = Client::connect([endpoint], None).await?;
    let mut strict_watch = strict.watch("k", None).await?;
    let mut lax_watch = lax.watch("k", None).await?;
    for watch in [&mut strict_watch, &mut lax_watch] {
        let created = watch.message().await?.context("a watch ended before it was created")?;
        ensure!(created.created(), "the first watch response is not the creation: {created:?}");
    }
    for i in cluster.members() {
        if i != stay {
            cluster.kill9(i)?;
        }
    }
    // A follower notices its leader gone within an election timeout or
    // two, then 3 more without one: well within 15.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match strict_watch.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .context("a watch requiring a leader was still open 15 s after the quorum was lost")?;
    let ended = describe::outcome(&ended, |()| "the stream ended".into());
    ensure!(ended == "err Unavailable: etcdserver: no leader", "the watch ended with {ended}");
    let refused = describe::outcome(&strict.get("k", Some(GetOptions::new().with_serializable())).await, describe::get);
    ensure!(refused == "err Unavailable: etcdserver: no leader", "a serializable get requiring a leader: {refused}");
    // A stream that requires a leader is refused as it opens.
    let opened = match strict.watch("k2", None).await {
        Ok(mut watch) => watch.message().await.map(|m| format!("{m:?}")),
        Err(e) => Err(e),
    };
    let opened = describe::outcome(&opened, |m| format!("a watch opened: {m}"));
    ensure!(opened == "err Unavailable: etcdserver: no leader", "a watch requiring a leader, opened without one: {opened}");
    // So is a JSON gateway call with the metadata as a header.
    let url = format!("{}/v3/kv/range", cluster.member(stay).endpoint());
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", "Grpc-Metadata-Hasleader: true", "-d", r#"{"key":"aw=="}"#, &url])
        .output()
        .await
        .context("cannot run curl")?;
    let body = String::from_utf8_lossy(&out.stdout);
    ensure!(body.contains("etcdserver: no leader"), "a gateway range requiring a leader, answered without one: {body}");
    let watched = tokio::time::timeout(Duration::from_millis(500), lax_watch.message()).await;
    ensure!(watched.is_err(), "a watch not requiring a leader ended too: {watched:?}");
    let lax_get = lax.get("k", Some(GetOptions::new().with_serializable())).await;
    ensure!(lax_get.is_ok(), "a serializable get without the metadata failed: {}", describe::outcome(&lax_get, describe::get));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_that_requires_a_leader_ends_when_the_quorum_is_lost() -> anyhow::Result<()> {
    for_each_flavor(3, &[], require_leader_ends_watches_without_a_leader).await
}
