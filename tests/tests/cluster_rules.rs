//! The rules a cluster keeps, each checked on a fresh cluster of every
//! selected flavor, real etcd 3.4 first (which proves the expectations) and
//! then raftkv (which is held to them). Refusals are compared as gRPC
//! `Code: message`, exactly as etcd answers them.
//!
//! - Membership changes that break a rule are refused, through the leader
//!   and through a follower: peer URLs in use, promoting a voter or a
//!   learner that never started, a second learner, unknown ids; removing a
//!   voter is refused while too few voters would be started, or while
//!   another voter is down.
//! - MoveLeader moves leadership to a follower when asked of the leader,
//!   and only then.
//! - A learner serves Status and serializable reads and refuses the rest.
//! - A follower cut off its peers and healed does not depose the leader
//!   (pre-vote, check-quorum) and catches up.
//! - A process of another cluster that lists the members' peer URLs never
//!   joins: the members refuse it with `cluster ID mismatch`.
//! - A founding member restarted on an empty data dir is refused: it has
//!   already been bootstrapped.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use etcd_client::{Client, GetOptions, MemberAddOptions};
use raftkv_tests::cluster::{
    ELECTION_TIMEOUT, UNHEALTHY, eventually, for_each_flavor, for_each_flavor_with, retry_while,
};
use raftkv_tests::{Cluster, Flavor, Server, describe};

/// How long a cluster may take to settle: etcd's strict reconfiguration
/// check to pass, a member to catch up, leadership to move.
const SETTLE: Duration = Duration::from_secs(30);
/// The harness's client gave up waiting (its request timeout).
const CLIENT_TIMEOUT: &str = "Cancelled: Timeout expired";

/// A member id no cluster here has: ids are 64 bits of a SHA-1.
const UNKNOWN_ID: u64 = 0x1234_5678_9abc_def0;

const PEER_URLS_EXIST: &str = "FailedPrecondition: etcdserver: Peer URLs already exists";
const NOT_A_LEARNER: &str = "FailedPrecondition: etcdserver: can only promote a learner member";
const LEARNER_NOT_READY: &str = "FailedPrecondition: etcdserver: can only promote a learner member which is in sync with leader";
const TOO_MANY_LEARNERS: &str =
    "FailedPrecondition: etcdserver: too many learner members in cluster";
const MEMBER_NOT_FOUND: &str = "NotFound: etcdserver: member not found";
/// etcd 3.4 maps this one to its client-side error type instead of a gRPC
/// status, which gRPC sends as Unknown.
const NOT_ENOUGH_STARTED: &str =
    "Unknown: etcdserver: re-configuration failed due to not enough started members";
const UNHEALTHY_CLUSTER: &str = "Unavailable: etcdserver: unhealthy cluster";
const NOT_LEADER: &str = "FailedPrecondition: etcdserver: not leader";
const BAD_TRANSFEREE: &str = "FailedPrecondition: etcdserver: bad leader transferee";
const LEARNER_REFUSES: &str = "Unavailable: etcdserver: rpc not supported for learner";

// ------------------------------------------------------------- membership

async fn membership_changes_that_break_a_rule_are_refused(
    cluster: &mut Cluster,
) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let follower = cluster.followers().await?[0];
    let voter_id = cluster.member(follower).id();
    let voter_url = cluster.member(follower).server().peer_url().to_owned();
    // A follower hands membership changes to the leader: the answers are
    // the leader's.
    for asked in [leader, follower] {
        let mut client = cluster.client(asked).await?;
        refused(
            &format!("MemberAdd of m{follower}'s peer URL, asked of m{asked}"),
            PEER_URLS_EXIST,
            async || client.member_add([voter_url.as_str()], None).await,
        )
        .await?;
        // etcd checks that the member to promote is in sync with the
        // leader before it checks that it is a learner: a voter a few
        // entries behind is "not in sync" for a moment. etcd 3.4 asked
        // through a follower once took longer than the client's 5 s to
        // answer (it put the promotion through raft, then refused it on
        // apply; CI, a loaded machine): from etcd, a timed-out call is
        // asked again; from raftkv it is a failure.
        let mut passing = vec![UNHEALTHY, LEARNER_NOT_READY];
        if cluster.flavor() == Flavor::Etcd {
            passing.push(CLIENT_TIMEOUT);
        }
        refused_once_settled(
            &format!("MemberPromote of the voter m{follower}, asked of m{asked}"),
            NOT_A_LEARNER,
            &passing,
            async || client.member_promote(voter_id).await,
        )
        .await?;
        refused(
            &format!("MemberPromote of an unknown id, asked of m{asked}"),
            MEMBER_NOT_FOUND,
            async || client.member_promote(UNKNOWN_ID).await,
        )
        .await?;
        refused(
            &format!("MemberRemove of an unknown id, asked of m{asked}"),
            MEMBER_NOT_FOUND,
            async || client.member_remove(UNKNOWN_ID).await,
        )
        .await?;
    }

    // A learner announced with MemberAdd and never started.
    let learner = cluster.prepare_member()?;
    let mut client = cluster.client(leader).await?;
    let added = retry_while(UNHEALTHY, SETTLE, async || {
        Ok(client
            .member_add([learner.peer_url.as_str()], Some(learner_option()))
            .await?)
    })
    .await
    .context("MemberAdd of a learner")?;
    let learner_id = added.member().context("MemberAdd without the member")?.id();
    let second = cluster.prepare_member()?;
    for asked in [leader, follower] {
        let mut client = cluster.client(asked).await?;
        refused(
            &format!("MemberAdd of a second learner, asked of m{asked}"),
            TOO_MANY_LEARNERS,
            async || {
                client
                    .member_add([second.peer_url.as_str()], Some(learner_option()))
                    .await
            },
        )
        .await?;
        refused(
            &format!("MemberPromote of the learner that never started, asked of m{asked}"),
            LEARNER_NOT_READY,
            async || client.member_promote(learner_id).await,
        )
        .await?;
    }

    let mut expected = initial_members(cluster);
    expected.insert(learner_id, true);
    let listed = member_list(cluster, leader).await?;
    ensure!(
        listed == expected,
        "MemberList after the refused changes (id -> learner): {listed:x?}, expected {expected:x?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_that_break_a_rule_are_refused_with_etcds_errors() -> anyhow::Result<()>
{
    for_each_flavor(3, &[], membership_changes_that_break_a_rule_are_refused).await
}

/// etcd counts a member as started once it has published its name, for
/// good: a voter added and never started makes 2 of 3 voters started, and
/// removing either started one would leave 1 of 2.
async fn removal_leaving_too_few_started_voters_is_refused(
    cluster: &mut Cluster,
) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let follower = cluster.followers().await?[0];
    let never_started = cluster.prepare_member()?;
    let mut client = cluster.client(leader).await?;
    let added = retry_while(UNHEALTHY, SETTLE, async || {
        Ok(client
            .member_add([never_started.peer_url.as_str()], None)
            .await?)
    })
    .await
    .context("MemberAdd of a voter")?;
    let never_started_id = added.member().context("MemberAdd without the member")?.id();
    for (asked, removed) in [(leader, follower), (follower, leader), (leader, leader)] {
        let id = cluster.member(removed).id();
        let mut client = cluster.client(asked).await?;
        refused(
            &format!("MemberRemove of m{removed}, asked of m{asked}"),
            NOT_ENOUGH_STARTED,
            async || client.member_remove(id).await,
        )
        .await?;
    }
    let mut expected = initial_members(cluster);
    expected.insert(never_started_id, false);
    let listed = member_list(cluster, leader).await?;
    ensure!(
        listed == expected,
        "MemberList after the refused removals (id -> learner): {listed:x?}, expected {expected:x?}"
    );
    let put = cluster
        .client(follower)
        .await?
        .put("still", "serving", None)
        .await;
    ensure!(put.is_ok(), "a put after the refused removals: {put:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_voter_is_refused_while_too_few_voters_would_be_started() -> anyhow::Result<()> {
    for_each_flavor(2, &[], removal_leaving_too_few_started_voters_is_refused).await
}

/// A member killed with SIGKILL is still started in etcd's sense (it has
/// published its name), so removing a live voter while it is down passes
/// that check and meets etcd's other one, `unhealthy cluster`: the voters
/// connected for 5 s would be too few for a quorum. Removing the dead one
/// is allowed.
async fn live_voter_stays_while_another_is_down(cluster: &mut Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let followers = cluster.followers().await?;
    let [dead, live] = followers[..] else {
        bail!("expected two followers, got {followers:?}");
    };
    // Until every voter has been connected for 5 s, etcd refuses changes
    // as unhealthy whatever they are; a refused add says that time is over.
    let mut client = cluster.client(leader).await?;
    let live_url = cluster.member(live).server().peer_url().to_owned();
    refused(
        "MemberAdd of a member's peer URL",
        PEER_URLS_EXIST,
        async || client.member_add([live_url.as_str()], None).await,
    )
    .await?;

    cluster.kill9(dead)?;
    // No API says when the leader counts a peer as down: etcd does once
    // the connection breaks, raft's check-quorum within two election
    // timeouts. A removal asked earlier could be let through and break the
    // quorum.
    tokio::time::sleep(ELECTION_TIMEOUT * 2).await;
    let live_id = cluster.member(live).id();
    for asked in [leader, live] {
        let mut client = cluster.client(asked).await?;
        let answer = describe::outcome(&client.member_remove(live_id).await, |_| String::new());
        ensure!(
            answer == format!("err {UNHEALTHY_CLUSTER}"),
            "MemberRemove of the live voter m{live} while m{dead} is down, asked of m{asked}: \
             {answer}, etcd answers {UNHEALTHY_CLUSTER}"
        );
    }
    ensure!(
        cluster.leader().await? == leader,
        "the refused removal moved leadership off m{leader}"
    );

    cluster.remove_member(dead).await?;
    let expected = initial_members(cluster);
    let listed = member_list(cluster, leader).await?;
    ensure!(
        listed == expected,
        "MemberList after removing the dead m{dead} (id -> learner): {listed:x?}, expected {expected:x?}"
    );
    let put = cluster
        .client(live)
        .await?
        .put("still", "serving", None)
        .await;
    ensure!(put.is_ok(), "a put after removing the dead member: {put:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_voter_is_not_removed_while_another_is_down_but_the_dead_one_is()
-> anyhow::Result<()> {
    for_each_flavor(3, &[], live_voter_stays_while_another_is_down).await
}

// ------------------------------------------------------------- MoveLeader

async fn leadership_moves_when_the_leader_is_asked(cluster: &mut Cluster) -> anyhow::Result<()> {
    let old = cluster.leader().await?;
    let followers = cluster.followers().await?;
    let [target, other] = followers[..] else {
        bail!("expected two followers, got {followers:?}");
    };
    let target_id = cluster.member(target).id();

    let mut client = cluster.client(other).await?;
    expect_refusal(
        &format!("MoveLeader to m{target}, asked of the follower m{other}"),
        NOT_LEADER,
        client.move_leader(target_id).await,
    )?;
    let mut client = cluster.client(old).await?;
    expect_refusal(
        "MoveLeader to an unknown id, asked of the leader",
        BAD_TRANSFEREE,
        client.move_leader(UNKNOWN_ID).await,
    )?;
    ensure!(
        cluster.leader().await? == old,
        "a refused MoveLeader moved leadership off m{old}"
    );

    client
        .move_leader(target_id)
        .await
        .with_context(|| format!("MoveLeader to m{target}, asked of the leader m{old}"))?;
    eventually(SETTLE, async || {
        let agreed = cluster.agreed_leader().await?;
        ensure!(agreed == target, "the members agree on m{agreed}");
        Ok(())
    })
    .await
    .with_context(|| format!("after MoveLeader to m{target}"))?;
    let put = cluster.client(old).await?.put("moved", "1", None).await;
    ensure!(put.is_ok(), "a put through the old leader: {put:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_hands_leadership_to_a_follower_only_from_the_leader() -> anyhow::Result<()> {
    for_each_flavor(3, &[], leadership_moves_when_the_leader_is_asked).await
}

// ---------------------------------------------------------------- learner

async fn learner_serves_status_and_serializable_reads(cluster: &mut Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let put = cluster
        .client(leader)
        .await?
        .put("learner/key", "before", None)
        .await?;
    let put_revision = describe::revision(put.header());
    let learner = cluster.add_member("m3", true).await?;
    let learner_id = cluster.member(learner).id();
    let mut client = cluster.client(learner).await?;

    let status = client.status().await.context("Status on the learner")?;
    ensure!(
        status.is_learner() && status.leader() == cluster.member(leader).id(),
        "Status on the learner: is_learner {}, leader {:x}",
        status.is_learner(),
        status.leader()
    );
    let read = eventually(SETTLE, async || {
        let got = client
            .get("learner/key", Some(GetOptions::new().with_serializable()))
            .await?;
        ensure!(got.count() == 1, "the learner does not hold the key yet");
        Ok(got)
    })
    .await
    .context("a serializable Range on the learner")?;
    ensure!(
        describe::kvs(read.kvs())
            == format!(
                "[learner/key=before create={put_revision} mod={put_revision} version=1 lease=0]"
            ),
        "a serializable Range on the learner read {}",
        describe::kvs(read.kvs())
    );

    expect_refusal(
        "a linearizable Range on the learner",
        LEARNER_REFUSES,
        client.get("learner/key", None).await,
    )?;
    expect_refusal(
        "a Put on the learner",
        LEARNER_REFUSES,
        client.put("learner/key", "through-learner", None).await,
    )?;
    expect_refusal(
        "a LeaseGrant on the learner",
        LEARNER_REFUSES,
        client.lease_grant(60, None).await,
    )?;
    let mut leader_client = cluster.client(leader).await?;
    expect_refusal(
        "MoveLeader to the learner",
        BAD_TRANSFEREE,
        leader_client.move_leader(learner_id).await,
    )?;
    let got = leader_client.get("learner/key", None).await?;
    ensure!(
        got.kvs().first().map(|kv| kv.value()) == Some(b"before".as_slice()),
        "the refused Put was applied: {}",
        describe::get(&got)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_serves_only_status_and_serializable_reads() -> anyhow::Result<()> {
    for_each_flavor(3, &[], learner_serves_status_and_serializable_reads).await
}

// -------------------------------------------------------------- stability

/// Writes while the follower is cut off, which it must catch up on.
const KEYS_WHILE_CUT: usize = 50;

async fn cut_follower_does_not_depose_the_leader(cluster: &mut Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let cut = cluster.followers().await?[0];
    let term = raft_term(cluster, leader).await?;

    cluster.cut(cut);
    let mut client = cluster.client(leader).await?;
    for i in 0..KEYS_WHILE_CUT {
        client
            .put(format!("cut/{i:04}"), i.to_string(), None)
            .await
            .with_context(|| format!("put cut/{i:04} while m{cut} is cut off"))?;
    }
    // The cut member's election timer runs out several times over; without
    // pre-vote it would raise its term each time.
    tokio::time::sleep(ELECTION_TIMEOUT * 5).await;
    let mut cut_client = cluster.client(cut).await?;
    let last = format!("cut/{:04}", KEYS_WHILE_CUT - 1);
    let held = cut_client
        .get(last.as_str(), Some(GetOptions::new().with_serializable()))
        .await?;
    ensure!(
        held.count() == 0,
        "m{cut} holds {last} while cut off: the cut did not isolate it"
    );

    cluster.heal(cut);
    tokio::time::sleep(ELECTION_TIMEOUT * 3).await;
    ensure!(
        cluster.leader().await? == leader,
        "m{leader} lost leadership after m{cut} was healed"
    );
    for i in cluster.running() {
        let now = raft_term(cluster, i).await?;
        ensure!(
            now == term,
            "m{i} is at term {now}, the leader m{leader} was elected in term {term}"
        );
    }
    eventually(SETTLE, async || {
        let got = cut_client
            .get(
                "cut/",
                Some(GetOptions::new().with_serializable().with_prefix()),
            )
            .await?;
        ensure!(
            got.count() == KEYS_WHILE_CUT as i64,
            "m{cut} holds {} of the {KEYS_WHILE_CUT} keys written while it was cut off",
            got.count()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_and_healed_does_not_depose_the_leader() -> anyhow::Result<()> {
    // raftkv always runs pre-vote; etcd 3.4 only with the flag.
    let pre_vote = |flavor| match flavor {
        Flavor::Etcd => vec!["--pre-vote"],
        Flavor::Raftkv => vec![],
    };
    for_each_flavor_with(3, pre_vote, cut_follower_does_not_depose_the_leader).await
}

// --------------------------------------------------------------- stranger

/// How long a process of another cluster may take to hear its first
/// refusal: it dials its peers at start, or at the latest when it
/// campaigns, within two election timeouts.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

async fn another_clusters_process_never_joins(cluster: &mut Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let term = raft_term(cluster, leader).await?;
    // Every member has published its client URLs through raft (each does
    // so once it is ready), or the lists below change by themselves.
    let mut lists = Vec::new();
    eventually(REFUSED_WITHIN, async || {
        lists.clear();
        for i in cluster.members() {
            let list = member_details(cluster, i).await?;
            ensure!(
                !list.iter().any(|m| m.contains(" [] ")),
                "m{i} lists a member that has not published its client URLs: {list:#?}"
            );
            lists.push(list);
        }
        Ok(())
    })
    .await?;

    let stranger = cluster.spawn_stranger("stranger", "another-cluster")?;
    eventually(REFUSED_WITHIN, async || {
        ensure!(
            stranger.log().contains("cluster ID mismatch"),
            "the stranger's log does not say cluster ID mismatch"
        );
        Ok(())
    })
    .await
    .with_context(|| format!("the stranger's log:\n{}", stranger.log_tail(30)))?;
    // It has campaigned by now, more than once.
    tokio::time::sleep(ELECTION_TIMEOUT * 3).await;

    for (i, before) in cluster.members().into_iter().zip(&lists) {
        let after = member_details(cluster, i).await?;
        ensure!(
            &after == before,
            "m{i}'s MemberList changed while the stranger ran:\n{after:#?}\nwas\n{before:#?}"
        );
    }
    ensure!(
        cluster.leader().await? == leader,
        "the stranger moved leadership off m{leader}"
    );
    ensure!(
        raft_term(cluster, leader).await? == term,
        "the stranger changed the members' term"
    );
    let mut client = cluster.client(leader).await?;
    client
        .put("stranger", "ignored", None)
        .await
        .context("a put through the leader while the stranger runs")?;
    // The stranger is one voter of four in its own cluster: no quorum, no
    // leader, whatever it answers (etcd does not answer clients at all).
    let status = tokio::time::timeout(Duration::from_secs(2), async {
        anyhow::Ok(stranger.client().await?.status().await?)
    })
    .await;
    if let Ok(Ok(status)) = status {
        ensure!(
            status.leader() == 0,
            "the stranger reports leader {:x}",
            status.leader()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_of_another_cluster_never_joins() -> anyhow::Result<()> {
    for_each_flavor(3, &[], another_clusters_process_never_joins).await
}

// ---------------------------------------------------------------- helpers

fn learner_option() -> MemberAddOptions {
    MemberAddOptions::new().with_is_learner()
}

/// What `call` answers, as `Code: message`, retried while it answers
/// etcd's `unhealthy cluster` (etcd refuses every change until each voter
/// has been connected for 5 s); it must fail with `expected`.
async fn refused<T>(
    what: &str,
    expected: &str,
    call: impl AsyncFnMut() -> Result<T, etcd_client::Error>,
) -> anyhow::Result<()> {
    refused_once_settled(what, expected, &[UNHEALTHY], call).await
}

/// `call` must be refused with `expected`; answers ending in one of
/// `passing` describe a state the cluster leaves by itself (etcd's strict
/// reconfiguration check, a member momentarily behind the leader) and are
/// asked again, for up to [`SETTLE`].
async fn refused_once_settled<T>(
    what: &str,
    expected: &str,
    passing: &[&str],
    mut call: impl AsyncFnMut() -> Result<T, etcd_client::Error>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let answer = match call().await {
            Ok(_) => bail!("{what} succeeded, etcd answers {expected}"),
            Err(err) => describe::error(&err),
        };
        let settling = answer != expected && passing.iter().any(|p| answer.ends_with(p));
        if !settling || tokio::time::Instant::now() > deadline {
            ensure!(
                answer == expected,
                "{what} answered {answer}, etcd answers {expected}"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `result` must be the refusal `expected`, `Code: message`.
fn expect_refusal<T>(
    what: &str,
    expected: &str,
    result: Result<T, etcd_client::Error>,
) -> anyhow::Result<()> {
    match result {
        Ok(_) => bail!("{what} succeeded, etcd answers {expected}"),
        Err(err) => {
            let answer = describe::error(&err);
            ensure!(
                answer == expected,
                "{what} answered {answer}, etcd answers {expected}"
            );
            Ok(())
        }
    }
}

/// Member id -> is learner (none is), of the members the cluster was
/// started with and still has.
fn initial_members(cluster: &Cluster) -> BTreeMap<u64, bool> {
    cluster
        .members()
        .into_iter()
        .map(|i| (cluster.member(i).id(), false))
        .collect()
}

/// Member id -> is learner, as member `i` lists them.
async fn member_list(cluster: &Cluster, i: usize) -> anyhow::Result<BTreeMap<u64, bool>> {
    let listed = cluster.client(i).await?.member_list().await?;
    Ok(listed
        .members()
        .iter()
        .map(|m| (m.id(), m.is_learner()))
        .collect())
}

/// Every member as member `i` lists it: id, name, peer URLs, client URLs,
/// learner.
async fn member_details(cluster: &Cluster, i: usize) -> anyhow::Result<Vec<String>> {
    let listed = cluster.client(i).await?.member_list().await?;
    let mut members: Vec<String> = listed
        .members()
        .iter()
        .map(|m| {
            format!(
                "{:x} {} {:?} {:?} {}",
                m.id(),
                m.name(),
                m.peer_urls(),
                m.client_urls(),
                m.is_learner()
            )
        })
        .collect();
    members.sort();
    Ok(members)
}

/// The raft term member `i` reports in Status.
async fn raft_term(cluster: &Cluster, i: usize) -> anyhow::Result<u64> {
    let mut client: Client = cluster.client(i).await?;
    Ok(client
        .status()
        .await
        .with_context(|| format!("Status on m{i}"))?
        .raft_term())
}

/// A founding member restarted on an empty data dir while the others know
/// it as started is refused, with etcd's message, and the cluster goes on
/// serving: bootstrapping again would make a second member with its id and
/// none of its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bootstrapped_member_refuses_an_empty_data_dir() -> anyhow::Result<()> {
    for_each_flavor(3, &[], async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        let victim = (leader + 1) % 3;
        let id = cluster.member(victim).id();
        cluster.kill9(victim)?;
        std::fs::remove_dir_all(cluster.member(victim).server().data_dir())?;
        cluster.spawn_only(victim)?;
        let status = cluster.exit_within(victim, SETTLE).await?.context("the member started on an empty data dir")?;
        ensure!(!status.success(), "the refused member exited with {status}");
        let log = cluster.member(victim).server().log();
        let expected = format!("member {id:x} has already been bootstrapped");
        ensure!(log.contains(&expected), "no {expected:?} in the member's log:\n{}", cluster.member(victim).server().log_tail(20));
        let mut c = cluster.client(leader).await?;
        c.put("after", "refusal", None).await?;
        Ok(())
    })
    .await
}

/// Two members' data dirs swapped (volumes mixed up): each refuses to start
/// under the other's name, saying whose data dir it is (raftkv only: etcd
/// takes the data dir's identity and renames the member).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_dir_of_another_member_is_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    let leader = cluster.leader().await?;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.kill9(a)?;
    cluster.kill9(b)?;
    let (dir_a, dir_b) = (cluster.member(a).server().data_dir(), cluster.member(b).server().data_dir());
    let parked = dir_a.with_extension("parked");
    std::fs::rename(&dir_a, &parked)?;
    std::fs::rename(&dir_b, &dir_a)?;
    std::fs::rename(&parked, &dir_b)?;
    for (i, owner) in [(a, b), (b, a)] {
        cluster.spawn_only(i)?;
        let status = cluster.exit_within(i, SETTLE).await?.context("a member started on another's data dir")?;
        ensure!(!status.success(), "exited with {status}");
        let expected = format!("belongs to member {:?}", cluster.member(owner).name());
        let log = cluster.member(i).server().log();
        ensure!(log.contains(&expected), "no {expected:?} in:\n{}", cluster.member(i).server().log_tail(20));
    }
    Ok(())
}

/// A data dir from another cluster (volumes mixed up between clusters) is
/// refused: the peers named by `--initial-cluster` answer for another
/// cluster id, and the member would otherwise serve that other cluster's
/// data on this one's client URL (raftkv only: etcd starts on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_dir_of_another_cluster_is_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    // A one-member cluster of its own (the harness runs one Cluster at a
    // time).
    let mut other = Server::start(Flavor::Raftkv).await?;
    let other_cid = other.client().await?.status().await?.header().map_or(0, |h| h.cluster_id());
    // A follower, so that the cluster keeps its leader throughout.
    let victim = *cluster.followers().await?.first().context("no follower")?;
    cluster.kill9(victim)?;
    other.kill9()?;
    let dir = cluster.member(victim).server().data_dir();
    std::fs::remove_dir_all(&dir)?;
    std::fs::rename(other.data_dir(), &dir)?;
    cluster.spawn_only(victim)?;
    let status = cluster.exit_within(victim, SETTLE).await?.context("a member started on another cluster's data dir")?;
    ensure!(!status.success(), "exited with {status}");
    let expected = format!("belongs to cluster {other_cid:x}, but the members of --initial-cluster that answered belong to cluster");
    let log = cluster.member(victim).server().log();
    ensure!(log.contains(&expected), "no {expected:?} in:\n{}", cluster.member(victim).server().log_tail(20));
    let mut c = cluster.client(cluster.leader().await?).await?;
    c.put("after", "refusal", None).await?;
    Ok(())
}
