//! Watch guarantees, checked event by event (etcd's robustness suite's
//! watch validators): watchers that follow a prefix through faults,
//! resuming on another member from the revision after the last they saw,
//! and the checks of what they saw against the store's own history.
//!
//! The truth is one watch from revision 1 of a cluster at rest. It is
//! checked on its own first: every revision from 2 on with no gap (each
//! write of the workload changes something), a key at most once per
//! revision, versions counting up from 1, and its replay equal
//! to a range of the prefix at its last revision. Each watcher then must
//! have seen exactly the truth's events from its start revision on, with
//! its filter applied: ordered, unique, none missing; each revision's
//! events in one response (atomic); `prev_kv` the key's previous version.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, KeyValue, WatchFilterType, WatchOptions};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::Rng;

use crate::history::{Endpoints, connect, pick};

/// One key's state in an event, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_rev: i64,
    pub mod_rev: i64,
    pub version: i64,
    pub lease: i64,
}

impl Kv {
    /// A key-value as the server's own types carry it (the simulation).
    pub fn of_pb(kv: &etcd_client::proto::PbKeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            create_rev: kv.create_revision,
            mod_rev: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }

    fn of(kv: &KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create_rev: kv.create_revision(),
            mod_rev: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// An event as a watcher saw it: which response carried it, and prev_kv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub response: usize,
    pub delete: bool,
    pub kv: Kv,
    pub prev: Option<Kv>,
}

/// An event of the store's history (the truth).
#[derive(Debug, Clone)]
pub struct TruthEvent {
    pub delete: bool,
    pub key: String,
    pub value: String,
    pub mod_rev: i64,
    pub kv: Kv,
}

/// What a watcher leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    None,
    NoPut,
    NoDelete,
}

impl Filter {
    fn keeps(self, delete: bool) -> bool {
        match self {
            Filter::None => true,
            Filter::NoPut => delete,
            Filter::NoDelete => !delete,
        }
    }
}

/// What one watcher saw.
#[derive(Debug)]
pub struct WatchLog {
    pub name: String,
    pub filter: Filter,
    pub start_rev: i64,
    pub seen: Vec<Seen>,
    /// How many times it resumed on a (perhaps other) member.
    pub resumes: usize,
}

/// When watchers stop: once they have seen up to `until` (0: not known
/// yet), or at once when `give_up` is set.
#[derive(Default)]
pub struct End {
    pub until: AtomicI64,
    pub give_up: AtomicBool,
}

/// Follows `prefix` from `start_rev` with prev_kv and `filter`, on random
/// members of `endpoints`, until `end` says. Now and then it drops its
/// stream on purpose and resumes elsewhere; errors make it resume too.
pub async fn follow(name: String, endpoints: Endpoints, prefix: String, filter: Filter, start_rev: i64, seed: u64, end: Arc<End>) -> WatchLog {
    let (until, give_up) = (&end.until, &end.give_up);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = WatchLog { name, filter, start_rev, seen: Vec::new(), resumes: 0 };
    // The next revision to see: every one before it has been delivered.
    let mut next = start_rev;
    let mut responses = 0;
    'resume: while !give_up.load(Ordering::SeqCst) {
        let until_now = until.load(Ordering::SeqCst);
        if until_now > 0 && next > until_now {
            break;
        }
        if log.resumes > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log.resumes += 1;
        let endpoint = pick(&endpoints, &mut rng);
        let keep_alive = ConnectOptions::new().with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let Some(mut client) = connect(&endpoint, keep_alive).await else {
            continue;
        };
        let mut options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(next);
        match filter {
            Filter::None => {}
            Filter::NoPut => options = options.with_filters([WatchFilterType::NoPut]),
            Filter::NoDelete => options = options.with_filters([WatchFilterType::NoDelete]),
        }
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), client.watch(prefix.as_str(), Some(options))).await else {
            continue;
        };
        let mut asked_progress = Instant::now();
        loop {
            if give_up.load(Ordering::SeqCst) {
                break 'resume;
            }
            let until_now = until.load(Ordering::SeqCst);
            if until_now > 0 && next > until_now {
                break 'resume;
            }
            // Once the end is known, progress requests tell a filtered
            // watcher that nothing more is coming.
            if until_now > 0 && asked_progress.elapsed() > Duration::from_millis(200) {
                asked_progress = Instant::now();
                if stream.request_progress().await.is_err() {
                    continue 'resume;
                }
            }
            let message = match tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(message))) => message,
                Ok(_) => continue 'resume,
            };
            if message.canceled() {
                continue 'resume;
            }
            let events = message.events();
            if events.is_empty() {
                // Created, or progress: every revision up to the header's
                // has been delivered (etcd's progress guarantee), once the
                // watcher is synced.
                let rev = message.header().map_or(0, |h| h.revision());
                if !message.created() && rev >= next && until_now > 0 && rev >= until_now {
                    next = rev + 1;
                }
                continue;
            }
            for event in events {
                let Some(kv) = event.kv() else { continue };
                log.seen.push(Seen {
                    response: responses,
                    delete: event.event_type() == EventType::Delete,
                    kv: Kv::of(kv),
                    prev: event.prev_kv().map(Kv::of),
                });
                next = next.max(kv.mod_revision() + 1);
            }
            responses += 1;
            // Drop the stream now and then, to resume from `next` elsewhere.
            if rng.random_bool(0.02) {
                continue 'resume;
            }
        }
    }
    log
}

/// The store's history of `prefix`, read from `endpoint` at rest: every
/// event from revision 1 up to the current revision, checked on its own
/// (see the module's doc). Returns the events and the last revision.
pub async fn truth(endpoint: &str, prefix: &str) -> anyhow::Result<(Vec<TruthEvent>, i64)> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(10));
    let mut client = Client::connect([endpoint], Some(options)).await.context("cannot connect for the store's history")?;
    let range = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let last = range.header().map_or(0, |h| h.revision());
    let mut events = Vec::new();
    if last > 1 {
        let mut stream = client.watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(1))).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while events.last().is_none_or(|e: &TruthEvent| e.mod_rev < last) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(remaining, stream.message())
                .await
                .context("the history watch did not reach the current revision in 30 s")??
                .context("the history watch ended")?;
            ensure!(!message.canceled(), "the history watch was canceled: {}", message.cancel_reason());
            for event in message.events() {
                let kv = event.kv().context("an event without its key")?;
                let kv = Kv::of(kv);
                events.push(TruthEvent {
                    delete: event.event_type() == EventType::Delete,
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                    mod_rev: kv.mod_rev,
                    kv,
                });
            }
        }
    }
    let read: BTreeMap<String, Kv> = range.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), Kv::of(kv))).collect();
    check_truth(&events, last, &read)?;
    Ok((events, last))
}

/// Checks the store's history on its own: every revision 2..=`last`, each
/// with its keys once, versions counting up, and its replay equal to
/// `read`, what a range of the prefix reads at `last`.
pub fn check_truth(events: &[TruthEvent], last: i64, read: &BTreeMap<String, Kv>) -> anyhow::Result<()> {
    let mut at = 1;
    let mut keys_at: Vec<&str> = Vec::new();
    for e in events {
        if e.mod_rev != at {
            ensure!(e.mod_rev == at + 1, "the store's history has revision {} after {at}: {e:?}", e.mod_rev);
            at = e.mod_rev;
            keys_at.clear();
        }
        ensure!(!keys_at.contains(&e.key.as_str()), "the store's history changes {} twice at {at}", e.key);
        keys_at.push(&e.key);
    }
    ensure!(events.last().map_or(1, |e| e.mod_rev) == last, "the store's history ends before its revision {last}");
    let mut state: BTreeMap<String, Kv> = BTreeMap::new();
    for e in events {
        if e.delete {
            ensure!(state.remove(&e.key).is_some(), "the store's history deletes {} at {}, which did not exist", e.key, e.mod_rev);
        } else {
            let expected_version = state.get(&e.key).map_or(1, |kv| kv.version + 1);
            ensure!(e.kv.version == expected_version, "version {} of {} at {}, {expected_version} due", e.kv.version, e.key, e.mod_rev);
            state.insert(e.key.clone(), e.kv.clone());
        }
    }
    if *read != state {
        bail!("the store's history does not replay to what it reads at revision {last}:\nreplay {state:#?}\nread {read:#?}");
    }
    Ok(())
}

/// Checks one watcher against the truth (see the module's doc).
pub fn check(log: &WatchLog, truth: &[TruthEvent]) -> anyhow::Result<()> {
    let name = &log.name;
    // The key's version before each event, from the truth.
    let mut prev_of: HashMap<(i64, &str), Option<Kv>> = HashMap::new();
    let mut current: HashMap<&str, Kv> = HashMap::new();
    for e in truth {
        prev_of.insert((e.mod_rev, &e.key), current.get(e.key.as_str()).cloned());
        if e.delete {
            current.remove(e.key.as_str());
        } else {
            current.insert(&e.key, e.kv.clone());
        }
    }
    let expected: Vec<&TruthEvent> = truth.iter().filter(|e| e.mod_rev >= log.start_rev && log.filter.keeps(e.delete)).collect();
    for (i, want) in expected.iter().enumerate() {
        let Some(seen) = log.seen.get(i) else {
            bail!("watcher {name}: saw {} events, {} due; the first missing is {} {} at {}", log.seen.len(), expected.len(), if want.delete { "DELETE" } else { "PUT" }, want.key, want.mod_rev);
        };
        if seen.delete != want.delete || seen.kv != want.kv {
            bail!(
                "watcher {name}: event {i} is {} {:?}, the store's history has {} {:?} (an event out of order, repeated or missing)",
                if seen.delete { "DELETE" } else { "PUT" },
                seen.kv,
                if want.delete { "DELETE" } else { "PUT" },
                want.kv
            );
        }
        let prev = prev_of.get(&(want.mod_rev, want.key.as_str())).cloned().flatten();
        ensure!(seen.prev == prev, "watcher {name}: prev_kv of the event at {} is {:?}, {prev:?} due", want.mod_rev, seen.prev);
    }
    if log.seen.len() > expected.len() {
        bail!("watcher {name}: saw {} events, {} due; one too many: {:?}", log.seen.len(), expected.len(), log.seen[expected.len()]);
    }
    // Atomic: a revision's events in one response.
    let mut response_of: HashMap<i64, usize> = HashMap::new();
    for seen in &log.seen {
        let response = *response_of.entry(seen.kv.mod_rev).or_insert(seen.response);
        ensure!(response == seen.response, "watcher {name}: the events of revision {} came in two responses", seen.kv.mod_rev);
    }
    Ok(())
}
