//! raftkvctl's `member add|remove|update|promote|list` next to etcdctl
//! 3.4's on a real three-member etcd cluster, with learners joining and
//! leaving: same bytes, same exit code.
//!
//! A membership change cannot be made twice, so each case lets etcdctl make
//! it, undoes it, lets raftkvctl make it, and compares. etcd derives a new
//! member's id from its peer URLs and the second it was added, so the two
//! tools' new members get different ids: outputs are compared with that id
//! (hex, decimal or protobuf varint) written as `<new>`. etcd lists members
//! by id, so where the list is printed each tool adds until its new member
//! sorts into the same place (and its id has the same varint length).
//! Everything else must match exactly. Skipped, with a message, when
//! /usr/bin/etcd or /usr/bin/etcdctl is absent.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    Cluster, ETCDCTL, Etcd, FORMATS, MemberConfig, RAFTKVCTL, RawOutput, WAIT, assert_same, assert_same_read,
    available, json, loopback_url, run_at, run_raw, start_cluster,
};

struct Member {
    id: u64,
    peer_urls: Vec<String>,
}

fn members(endpoint: &str) -> Vec<Member> {
    let out = run_at(ETCDCTL, endpoint, &["member", "list", "-w", "json"], "");
    assert_eq!(out.code, 0, "member list: {out:?}");
    let list = json(&out.stdout);
    let members = list["members"].as_array().cloned().unwrap_or_default();
    members
        .iter()
        .map(|m| Member {
            id: m["ID"].as_u64().expect("member id"),
            peer_urls: m["peerURLs"]
                .as_array()
                .map(|urls| urls.iter().filter_map(|u| u.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        })
        .collect()
}

fn member_with_peer(endpoint: &str, peer_url: &str) -> Option<u64> {
    members(endpoint).into_iter().find(|m| m.peer_urls.iter().any(|u| u == peer_url)).map(|m| m.id)
}

fn remove_member(endpoint: &str, id: u64) {
    let out = run_at(ETCDCTL, endpoint, &["member", "remove", &format!("{id:x}")], "");
    assert_eq!(out.code, 0, "remove {id:x}: {out:?}");
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// The output with member `id` written as `<new>` wherever a format prints
/// it: `%16x`, `%x`, decimal, and the protobuf `ID` field (tag 1, varint).
fn with_id_hidden(out: RawOutput, id: u64) -> RawOutput {
    let mut tagged = vec![0x08];
    tagged.extend(varint(id));
    let forms: [(Vec<u8>, &[u8]); 4] = [
        (format!("{id:16x}").into_bytes(), b"<new>"),
        (format!("{id:x}").into_bytes(), b"<new>"),
        (id.to_string().into_bytes(), b"<new>"),
        (tagged, b"\x08<new>"),
    ];
    let hide = |mut bytes: Vec<u8>| {
        for (needle, with) in &forms {
            bytes = replace_bytes(&bytes, needle, with);
        }
        bytes
    };
    let stderr = String::from_utf8_lossy(&hide(out.stderr.into_bytes())).into_owned();
    RawOutput { stdout: hide(out.stdout), stderr, code: out.code }
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The ids between which a new member's id must fall to be listed in the
/// same place, and to take as many bytes as a protobuf varint (one more
/// from 2^56 and from 2^63): the widest such gap, so that a random id
/// lands there often.
fn widest_gap(ids: &[u64]) -> (u64, u64) {
    let mut bounds: Vec<u64> = ids.to_vec();
    bounds.extend([1 << 56, 1 << 63]);
    bounds.sort_unstable();
    let mut gaps = Vec::new();
    let mut low = 0;
    for &id in bounds.iter().chain(std::iter::once(&u64::MAX)) {
        gaps.push((low, id));
        low = id;
    }
    gaps.into_iter().max_by_key(|(low, high)| high - low).unwrap_or((0, u64::MAX))
}

/// Adds learners at one peer URL with `tool`: every addition in a second
/// of its own (the same URL in the same second gives the same id, which
/// etcd refuses once removed), until the new id falls within `gap`.
struct LearnerAdder<'a> {
    endpoint: &'a str,
    peer_url: String,
    last_second: u64,
}

impl LearnerAdder<'_> {
    fn add(&mut self, tool: &str, format: &str, gap: (u64, u64)) -> (RawOutput, u64) {
        let peer_flag = format!("--peer-urls={}", self.peer_url);
        let args = ["member", "add", "learner", "--learner", &peer_flag, "-w", format];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            while unix_seconds() <= self.last_second {
                std::thread::sleep(Duration::from_millis(50));
            }
            let out = run_raw(tool, self.endpoint, &args, "");
            self.last_second = unix_seconds();
            let id = member_with_peer(self.endpoint, &self.peer_url)
                .unwrap_or_else(|| panic!("{tool} {args:?} added no member: {out:?}"));
            if gap.0 < id && id < gap.1 {
                return (out, id);
            }
            remove_member(self.endpoint, id);
            assert!(Instant::now() < deadline, "no new member id fell within {gap:?}");
        }
    }
}

fn initial_cluster(add_output: &[u8]) -> String {
    let text = String::from_utf8_lossy(add_output);
    let line = text.lines().find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=")).expect("ETCD_INITIAL_CLUSTER line");
    line.trim_matches('"').to_string()
}

/// Promotes with `tool` once the learner has caught up with the leader
/// (etcd refuses before); returns the first answer that is not that refusal.
fn promote_when_in_sync(tool: &str, endpoint: &str, id: u64) -> RawOutput {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run_raw(tool, endpoint, &["member", "promote", &format!("{id:x}")], "");
        if !out.stderr.contains("in sync with leader") || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A member that joined as a learner, with the peer URL it advertises and
/// one more it listens on.
struct Learner {
    _etcd: Etcd,
    id: u64,
    peer_url: String,
    extra_peer_url: String,
    started: Instant,
}

/// Waits until `since` is 6s ago: etcd adds a member, or removes a voting
/// one, only once the voting members have been connected for 5s.
fn wait_connected(since: Instant) {
    std::thread::sleep((since + Duration::from_secs(6)).saturating_duration_since(Instant::now()));
}

/// Starts the learner `member add` printed the settings for.
fn start_learner(cluster: &Cluster, name: &str, peer_url: &str, extra: &[String], add_output: &[u8]) -> Etcd {
    Etcd::spawn(&MemberConfig {
        name,
        peer_url,
        extra_peer_urls: extra,
        initial_cluster: &initial_cluster(add_output),
        state: "existing",
        token: &cluster.token,
    })
}

#[test]
fn membership_changes_print_as_etcdctl() {
    if !available() {
        return;
    }
    let cluster = start_cluster(3);
    // One endpoint: the member that answers fills the response header.
    let ep = cluster.members[0].endpoint.clone();
    let ep = ep.as_str();
    let founders: Vec<u64> = members(ep).iter().map(|m| m.id).collect();
    let (m2, m3_peer) = (format!("{:x}", founders[1]), cluster.members[2].peer_url.clone());
    for format in FORMATS {
        assert_same_read(ep, &["member", "list", "-w", format]);
    }
    // Sooner, etcd refuses any new member: "unhealthy cluster".
    wait_connected(cluster.healthy_since);
    let refused: &[&[&str]] = &[
        &["member", "add"],
        &["member", "add", "x", "http://127.0.0.1:1", "y"],
        &["member", "add", "x"],
        &["member", "add", "x", "--learner", &format!("--peer-urls={m3_peer}")],
        &["member", "remove"],
        &["member", "remove", "zz"],
        &["member", "remove", "123456"],
        &["member", "update", "123456", "--peer-urls=http://127.0.0.1:1"],
        &["member", "update", &m2],
        &["member", "update", &m2, &format!("--peer-urls={m3_peer}")],
        &["member", "promote", "ffffffffffffffffff"],
        &["member", "promote", &m2],
    ];
    for args in refused {
        assert_same_read(ep, args);
    }
    let not_found = run_raw(RAFTKVCTL, ep, &["member", "remove", "123456"], "");
    assert_eq!((not_found.stderr.as_str(), not_found.code), ("Error: etcdserver: member not found\n", 1));

    // member add --learner, in every format.
    let widest = widest_gap(&founders);
    let mut adder = LearnerAdder { endpoint: ep, peer_url: loopback_url(), last_second: 0 };
    for format in FORMATS {
        // fields and table print no member, only that they cannot.
        let gap = if matches!(format, "fields" | "table") { (0, u64::MAX) } else { widest };
        let (expected, etcdctl_id) = adder.add(ETCDCTL, format, gap);
        remove_member(ep, etcdctl_id);
        let (got, raftkvctl_id) = adder.add(RAFTKVCTL, format, gap);
        remove_member(ep, raftkvctl_id);
        let what = format!("member add --learner -w {format}");
        assert_same(with_id_hidden(got, raftkvctl_id), with_id_hidden(expected, etcdctl_id), &what);
    }

    // Each tool in turn adds a learner, fails to promote it before it
    // runs, starts it from the settings it printed and promotes it once it
    // has caught up (etcd allows one learner at a time).
    let mut learners: Vec<Learner> = Vec::new();
    let mut answers = Vec::new();
    for (tool, name) in [(ETCDCTL, "l1"), (RAFTKVCTL, "l2")] {
        if let Some(previous) = learners.last() {
            wait_connected(previous.started);
        }
        let (peer_url, extra_peer_url) = (loopback_url(), loopback_url());
        let peer_flag = format!("--peer-urls={peer_url}");
        let added = run_raw(tool, ep, &["member", "add", name, "--learner", &peer_flag], "");
        assert_eq!(added.code, 0, "{tool} member add: {added:?}");
        let id = member_with_peer(ep, &peer_url).expect("learner added");
        let too_early = run_raw(tool, ep, &["member", "promote", &format!("{id:x}")], "");
        assert!(too_early.stderr.contains("in sync with leader"), "{too_early:?}");
        let etcd = start_learner(&cluster, name, &peer_url, std::slice::from_ref(&extra_peer_url), &added.stdout);
        let started = Instant::now();
        let promoted = promote_when_in_sync(tool, ep, id);
        answers.push((with_id_hidden(too_early, id), with_id_hidden(promoted, id)));
        learners.push(Learner { _etcd: etcd, id, peer_url, extra_peer_url, started });
    }
    let (got, expected) = (answers.pop().expect("raftkvctl's"), answers.pop().expect("etcdctl's"));
    assert_eq!(expected.1.code, 0, "{expected:?}");
    assert_same(got.0, expected.0, "member promote of a learner that is not running");
    assert_same(got.1, expected.1, "member promote");
    assert_same_read(ep, &["member", "list", "-w", "table"]);
    wait_connected(learners[1].started);

    // member update, in every format: both tools change the same member in
    // the same way, and etcdctl changes it back after each.
    let (l1, l2) = (format!("{:x}", learners[0].id), format!("{:x}", learners[1].id));
    let both_urls = format!("--peer-urls={},{}", learners[0].extra_peer_url, learners[0].peer_url);
    let restore = || {
        let out = run_at(ETCDCTL, ep, &["member", "update", &l1, &format!("--peer-urls={}", learners[0].peer_url)], "");
        assert_eq!(out.code, 0, "{out:?}");
    };
    for format in FORMATS {
        let args = ["member", "update", &l1, &both_urls, "-w", format];
        let expected = run_raw(ETCDCTL, ep, &args, "");
        restore();
        let got = run_raw(RAFTKVCTL, ep, &args, "");
        restore();
        assert_same(got, expected, &format!("{args:?}"));
    }

    // member remove, in every format, of a learner that never started; the
    // formats that cannot print the answer remove it all the same.
    for format in FORMATS {
        let mut removed = Vec::new();
        for tool in [ETCDCTL, RAFTKVCTL] {
            let peer_url = loopback_url();
            let add = run_at(ETCDCTL, ep, &["member", "add", "gone", "--learner", &format!("--peer-urls={peer_url}")], "");
            assert_eq!(add.code, 0, "{add:?}");
            let id = member_with_peer(ep, &peer_url).expect("learner added");
            let out = run_raw(tool, ep, &["member", "remove", &format!("{id:x}"), "-w", format], "");
            assert_eq!(member_with_peer(ep, &peer_url), None, "{tool} -w {format} left the member in");
            removed.push(with_id_hidden(out, id));
        }
        let (got, expected) = (removed.pop().expect("raftkvctl's"), removed.pop().expect("etcdctl's"));
        assert_same(got, expected, &format!("member remove -w {format}"));
    }

    // Removing the promoted members, and one of them again.
    let expected = with_id_hidden(run_raw(ETCDCTL, ep, &["member", "remove", &l1], ""), learners[0].id);
    let got = with_id_hidden(run_raw(RAFTKVCTL, ep, &["member", "remove", &l2], ""), learners[1].id);
    assert_same(got, expected, "member remove of a voting member");
    assert_same_read(ep, &["member", "remove", &l1]);
    assert_same_read(ep, &["member", "list", "-w", "json"]);
}
