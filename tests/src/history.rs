//! Recorded histories of KV requests, for the fault tests: clients record
//! each request's invocation and outcome, an answer, a definite refusal or
//! no answer at all (indeterminate: it may have taken effect, or not); the
//! history is then decided by `lincheck` (porcupine behind a small main,
//! `tests/go/lincheck`, built by `scripts/go-peers.sh`).
//!
//! The operations (each on one key, so the checker can take keys one at a
//! time; linearizability is compositional): get, put (with or without a
//! lease), delete, a txn that puts if the key's mod revision is what the
//! client last saw and gets it otherwise (kube-apiserver's update), and
//! lease revoke (each lease holds one key). Values are unique, so a put of
//! unknown outcome is resolved from the store's own history (its watch from
//! revision 1): found there, it happened at that revision; not found, it
//! never happened. Linearizable reads only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::watchcheck::TruthEvent;

/// How long a client waits for an answer before counting the request as
/// indeterminate and going on with a new connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Leases live far longer than a run: expiry is time, not a request, and
/// is not what the checker decides.
const LEASE_TTL: i64 = 3600;

/// One request on one key.
#[derive(Debug, Clone)]
pub enum Op {
    Get,
    Put { value: String, lease: i64 },
    Delete,
    /// Put `value` if the key's mod revision is `expect_mod` (0: absent),
    /// else get the key.
    Txn { expect_mod: i64, value: String },
    Revoke { lease: i64 },
}

/// What a read (or a failed txn's get) saw, and the header revision.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub rev: i64,
    pub found: bool,
    pub value: String,
    pub mod_rev: i64,
    pub version: i64,
    pub lease: i64,
    pub deleted: i64,
    pub succeeded: bool,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Answer),
    /// No answer (a timeout, a broken connection, an error that does not
    /// say the request was refused).
    Unknown,
    /// A put refused because its lease is gone: it certainly did not happen.
    LeaseNotFound,
    /// The client could not connect: the request was never sent (not
    /// recorded).
    NotSent,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    /// Nanoseconds since the history began.
    pub call: u64,
    /// `None`: never answered.
    pub ret: Option<u64>,
    pub key: String,
    pub op: Op,
    pub outcome: Outcome,
}

/// The history of one run, shared by its clients.
pub struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
    next_client: AtomicUsize,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History { start: Instant::now(), records: Mutex::default(), next_client: AtomicUsize::new(0) }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn push(&self, record: Record) {
        self.records.lock().unwrap_or_else(PoisonError::into_inner).push(record);
    }

    /// Records an operation that ended now with `outcome` (a request
    /// never sent is not one); false if the client must reconnect.
    fn record(&self, client: usize, call: u64, key: String, op: Op, outcome: Outcome) -> bool {
        match outcome {
            Outcome::NotSent => false,
            Outcome::Unknown => {
                self.push(Record { client, call, ret: None, key, op, outcome });
                false
            }
            Outcome::Ok(_) | Outcome::LeaseNotFound => {
                let ret = Some(self.now());
                self.push(Record { client, call, ret, key, op, outcome });
                true
            }
        }
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// (answered, indeterminate) operations so far.
    pub fn counts(&self) -> (usize, usize) {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let unknown = records.iter().filter(|r| matches!(r.outcome, Outcome::Unknown)).count();
        (records.len() - unknown, unknown)
    }
}

/// The client URLs of the members, as they change (a run replaces members).
pub type Endpoints = Arc<RwLock<Vec<String>>>;

/// One of `endpoints`, at random.
pub fn pick(endpoints: &Endpoints, rng: &mut StdRng) -> String {
    let endpoints = endpoints.read().unwrap_or_else(PoisonError::into_inner);
    endpoints[rng.random_range(0..endpoints.len())].clone()
}

/// A client of `endpoint` alone with `options`, if it connects within a
/// second (500 ms for the connection itself): members come and go in a
/// fault run, and a dead one must not hold a client up.
pub async fn connect(endpoint: &str, options: ConnectOptions) -> Option<Client> {
    let options = options.with_connect_timeout(Duration::from_millis(500));
    tokio::time::timeout(Duration::from_secs(1), Client::connect([endpoint], Some(options))).await.ok()?.ok()
}

/// The keys a run's clients use: `{prefix}k0` ..
pub fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}k{i}")
}

/// Runs `clients` clients against random members of `endpoints` until
/// `stop`, on `keys` keys under `prefix`, choosing with `seed`. After a
/// request without an answer a client reconnects (to another member,
/// perhaps) under a new client id, as etcd's robustness suite does.
pub async fn run_clients(
    endpoints: Endpoints,
    prefix: String,
    keys: usize,
    clients: usize,
    seed: u64,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(c as u64));
        tasks.spawn(client_loop(endpoints.clone(), prefix.clone(), keys, rng, history.clone(), stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn client_loop(endpoints: Endpoints, prefix: String, keys: usize, mut rng: StdRng, history: Arc<History>, stop: Arc<AtomicBool>) {
    let mut writes = 0u64;
    let mut seen_mod: HashMap<String, i64> = HashMap::new();
    let mut leases: Vec<(String, i64)> = Vec::new();
    let mut revoked: Vec<(String, i64)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let client_id = history.next_client.fetch_add(1, Ordering::SeqCst);
        let endpoint = pick(&endpoints, &mut rng);
        let Some(mut client) = connect(&endpoint, ConnectOptions::new().with_timeout(REQUEST_TIMEOUT)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            let key = key(&prefix, rng.random_range(0..keys));
            let roll = rng.random_range(0..100);
            let mut value = || {
                writes += 1;
                format!("c{client_id}-{writes}")
            };
            let op = match roll {
                0..40 => Op::Get,
                40..60 => Op::Put { value: value(), lease: 0 },
                60..80 => {
                    let expect_mod = if rng.random_bool(0.8) { seen_mod.get(&key).copied().unwrap_or(0) } else { 0 };
                    Op::Txn { expect_mod, value: value() }
                }
                80..86 => Op::Delete,
                86..88 if !revoked.is_empty() => {
                    // A put with a lease revoked before: refused, always.
                    let (key, lease) = revoked[rng.random_range(0..revoked.len())].clone();
                    let op = Op::Put { value: value(), lease };
                    let call = history.now();
                    let outcome = execute(&mut client, &key, &op).await;
                    if !history.record(client_id, call, key, op, outcome) {
                        break;
                    }
                    continue;
                }
                86..94 => {
                    // A lease of its own for this one key; the grant is
                    // not an operation on the key.
                    let Ok(Ok(granted)) = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_grant(LEASE_TTL, None)).await else {
                        break;
                    };
                    leases.push((key.clone(), granted.id()));
                    Op::Put { value: value(), lease: granted.id() }
                }
                _ => {
                    if leases.is_empty() {
                        continue;
                    }
                    let (key, lease) = leases.swap_remove(rng.random_range(0..leases.len()));
                    let call = history.now();
                    let outcome = revoke(&mut client, lease).await;
                    if matches!(outcome, Outcome::Ok(_)) {
                        revoked.push((key.clone(), lease));
                    }
                    if !history.record(client_id, call, key, Op::Revoke { lease }, outcome) {
                        break;
                    }
                    continue;
                }
            };
            let call = history.now();
            let outcome = execute(&mut client, &key, &op).await;
            if let Outcome::Ok(answer) = &outcome {
                match &op {
                    Op::Get => {
                        seen_mod.insert(key.clone(), answer.mod_rev);
                    }
                    Op::Put { .. } => {
                        seen_mod.insert(key.clone(), answer.rev);
                    }
                    Op::Txn { .. } => {
                        seen_mod.insert(key.clone(), if answer.succeeded { answer.rev } else { answer.mod_rev });
                    }
                    Op::Delete => {
                        seen_mod.insert(key.clone(), 0);
                    }
                    Op::Revoke { .. } => {}
                }
            }
            if !history.record(client_id, call, key, op, outcome) {
                break;
            }
        }
        // No answer, or no connection: a pause before trying a member
        // again, so a cluster that is down gathers a few indeterminate
        // requests, not thousands.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
    }
}

async fn revoke(client: &mut Client, lease: i64) -> Outcome {
    match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(lease)).await {
        Ok(Ok(resp)) => Outcome::Ok(Answer { rev: resp.header().map_or(0, |h| h.revision()), ..Answer::default() }),
        // Already revoked: revoking it again is what happened.
        Ok(Err(err)) if lease_not_found(&err) => Outcome::Ok(Answer::default()),
        Ok(Err(err)) if not_sent(&err) => Outcome::NotSent,
        _ => Outcome::Unknown,
    }
}

/// The connection could not be made: the request never left the client.
fn not_sent(err: &etcd_client::Error) -> bool {
    // gRPC's UNAVAILABLE is 14.
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 14 && s.message().contains("tcp connect error"))
}

fn lease_not_found(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.message() == "etcdserver: requested lease not found")
}

async fn execute(client: &mut Client, key: &str, op: &Op) -> Outcome {
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
        match op {
            Op::Get => {
                let resp = client.get(key, None).await?;
                Ok(read(resp.header().map_or(0, |h| h.revision()), resp.kvs().first()))
            }
            Op::Put { value, lease } => {
                let options = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
                let resp = client.put(key, value.as_str(), options).await?;
                Ok(Answer { rev: resp.header().map_or(0, |h| h.revision()), ..Answer::default() })
            }
            Op::Delete => {
                let resp = client.delete(key, None).await?;
                Ok(Answer { rev: resp.header().map_or(0, |h| h.revision()), deleted: resp.deleted(), ..Answer::default() })
            }
            Op::Txn { expect_mod, value } => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, *expect_mod)])
                    .and_then([TxnOp::put(key, value.as_str(), None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = client.txn(txn).await?;
                let rev = resp.header().map_or(0, |h| h.revision());
                if resp.succeeded() {
                    return Ok(Answer { rev, succeeded: true, ..Answer::default() });
                }
                match resp.op_responses().first() {
                    Some(TxnOpResponse::Get(get)) => Ok(read(rev, get.kvs().first())),
                    _ => Err(etcd_client::Error::InvalidArgs("a failed txn answered without its get".to_owned())),
                }
            }
            Op::Revoke { .. } => unreachable!("revokes are executed by revoke()"),
        }
    })
    .await;
    match answer {
        Ok(Ok(answer)) => Outcome::Ok(answer),
        Ok(Err(err)) if matches!(op, Op::Put { lease, .. } if *lease != 0) && lease_not_found(&err) => Outcome::LeaseNotFound,
        Ok(Err(err)) if not_sent(&err) => Outcome::NotSent,
        _ => Outcome::Unknown,
    }
}

fn read(rev: i64, kv: Option<&etcd_client::KeyValue>) -> Answer {
    match kv {
        Some(kv) => Answer {
            rev,
            found: true,
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            mod_rev: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
            ..Answer::default()
        },
        None => Answer { rev, ..Answer::default() },
    }
}

/// The history with every write of unknown outcome resolved from the
/// store's `truth` (every event, from revision 1): a put (or txn put) whose
/// value is there happened at that revision, answered at no known time;
/// one that is not never happened and is left out, as are reads without an
/// answer. Deletes and revokes of unknown outcome stay unknown (their
/// effect carries no value to find them by).
pub fn resolve(records: &[Record], truth: &[TruthEvent]) -> Vec<Record> {
    let written: HashMap<&str, i64> = truth
        .iter()
        .filter(|e| !e.delete)
        .map(|e| (e.value.as_str(), e.mod_rev))
        .collect();
    records
        .iter()
        .filter_map(|r| {
            if !matches!(r.outcome, Outcome::Unknown) {
                return Some(r.clone());
            }
            let value = match &r.op {
                Op::Get => return None,
                Op::Delete | Op::Revoke { .. } => return Some(r.clone()),
                Op::Put { value, .. } | Op::Txn { value, .. } => value,
            };
            let rev = *written.get(value.as_str())?;
            let succeeded = matches!(r.op, Op::Txn { .. });
            Some(Record { outcome: Outcome::Ok(Answer { rev, succeeded, ..Answer::default() }), ..r.clone() })
        })
        .collect()
}

/// The history as `lincheck` reads it.
pub fn to_json(records: &[Record]) -> Value {
    Value::Array(
        records
            .iter()
            .map(|r| {
                let (op, value, lease, expect_mod) = match &r.op {
                    Op::Get => ("get", "", 0, 0),
                    Op::Put { value, lease } => ("put", value.as_str(), *lease, 0),
                    Op::Delete => ("delete", "", 0, 0),
                    Op::Txn { expect_mod, value } => ("txn", value.as_str(), 0, *expect_mod),
                    Op::Revoke { lease } => ("revoke", "", *lease, 0),
                };
                let output = match &r.outcome {
                    Outcome::Ok(a) => json!({
                        "status": "ok", "rev": a.rev, "found": a.found, "value": a.value, "mod": a.mod_rev,
                        "ver": a.version, "lease": a.lease, "deleted": a.deleted, "succeeded": a.succeeded,
                    }),
                    Outcome::Unknown | Outcome::NotSent => json!({ "status": "unknown" }),
                    Outcome::LeaseNotFound => json!({ "status": "lease_not_found" }),
                };
                json!({
                    "client": r.client,
                    "call": r.call,
                    "return": r.ret.map_or(-1, |t| t as i64),
                    "input": { "op": op, "key": r.key, "value": value, "lease": lease, "expect_mod": expect_mod },
                    "output": output,
                })
            })
            .collect(),
    )
}

/// The `lincheck` binary `scripts/go-peers.sh` builds into `$RAFTKV_GO_BIN`.
pub fn lincheck_binary() -> anyhow::Result<PathBuf> {
    let path = crate::binaries::go_bin().join("lincheck");
    if !path.is_file() {
        bail!("lincheck is not built at {}: run `make go-peers` (scripts/go-peers.sh builds it from tests/go/lincheck)", path.display());
    }
    Ok(path)
}

/// Writes `records` to `path` and has `lincheck` decide them: Ok with its
/// one-line verdict when linearizable, an error with the minimal history it
/// printed when not.
pub fn check(records: &[Record], path: &Path) -> anyhow::Result<String> {
    std::fs::write(path, serde_json::to_vec(&to_json(records))?).with_context(|| format!("cannot write {}", path.display()))?;
    let out = std::process::Command::new(lincheck_binary()?)
        .arg(path)
        .output()
        .context("cannot run lincheck")?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok(stdout),
        Some(1) => bail!("the history is not linearizable ({}):\n{stdout}", path.display()),
        _ => bail!("lincheck could not decide {}: {stdout}{}", path.display(), String::from_utf8_lossy(&out.stderr)),
    }
}
