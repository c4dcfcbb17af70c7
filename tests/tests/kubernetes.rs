//! raftkv as Kubernetes' storage: a real kube-apiserver and
//! kube-controller-manager (built from Go modules, `tests/k8s`) store their
//! data in raftkv, and one script of what a cluster does all day runs
//! against them; the same script against etcd 3.6 (the release Kubernetes
//! ships with) must observe the same things.
//!
//! ConfigMaps bypass kube-apiserver's watch cache (`--watch-cache-sizes=
//! configmaps#0`), so their lists, pages and watches go straight to the
//! store's Range and Watch; every other resource is served from the watch
//! cache, which the store feeds through one watch per resource with
//! progress notifications and progress requests (consistent reads from the
//! cache, streaming lists).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use raftkv_tests::binaries;
use raftkv_tests::k8s::{ControlPlane, Options};
use raftkv_tests::{Cluster, Flavor, Server};
use tokio::sync::{Mutex, OnceCell};

/// One control plane at a time: each is a few hundred MB and most of a core.
static SERIAL: Mutex<()> = Mutex::const_new(());

const NS: &str = "app";
/// ConfigMaps the script creates: enough for many pages.
const CONFIGMAPS: usize = 2000;
const PAGE: u32 = 250;

fn options() -> Options {
    Options {
        // The apiserver's own compactor, often enough to be seen working.
        compaction_interval: Some(Duration::from_secs(5)),
        apiserver_args: vec!["--watch-cache-sizes=configmaps#0".into()],
        ..Options::default()
    }
}

fn configmap(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": {"value": value},
    }))
    .expect("a valid ConfigMap")
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn api_error(result: Result<impl Sized, kube::Error>) -> String {
    match result {
        Ok(_) => "succeeded".into(),
        Err(kube::Error::Api(status)) => format!("{} {}", status.code, status.reason),
        Err(other) => format!("client error: {other}"),
    }
}

/// The store's current revision, straight from it.
async fn store_revision(store: &mut etcd_client::Client) -> anyhow::Result<i64> {
    let resp = store.get("/registry/health", None).await?;
    Ok(resp.header().context("a header")?.revision())
}

/// The script: what a cluster does all day, as lines of observations that
/// do not depend on the store (no resource versions, no timings). Each step
/// also checks its own invariants.
async fn storage_script(cp: &ControlPlane, store: &mut etcd_client::Client) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    let client = cp.client().await?;

    // Namespaces through kubectl, as a person would.
    cp.kubectl(&["create", "namespace", NS])?;
    let ns: Namespace = Api::all(client.clone()).get(NS).await?;
    seen.push(format!("namespace {NS}: {:?}", ns.status.and_then(|s| s.phase)));

    // Thousands of ConfigMaps, 16 creates in flight.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let names: Vec<String> = (0..CONFIGMAPS).map(|i| format!("cm-{i:05}")).collect();
    futures::stream::iter(names.clone())
        .map(|name| {
            let cms = cms.clone();
            async move { cms.create(&PostParams::default(), &configmap(&name, &name)).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    seen.push(format!("created {CONFIGMAPS} configmaps"));

    // Paging: every page but the last carries a continue token; the first
    // says how many remain; the pages together are every object, in order.
    let mut listed = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    let mut first_remaining = None;
    let mut every = 0;
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = cms.list(&params).await?;
        pages += 1;
        if pages == 1 {
            first_remaining = page.metadata.remaining_item_count;
        }
        // Beside ours, the controller-manager's kube-root-ca.crt.
        every += page.items.len();
        listed.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()).filter(|n| n.starts_with("cm-")));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    ensure!(listed == names, "the pages hold {} names, not the {} created, in order", listed.len(), names.len());
    ensure!(
        first_remaining == Some((every - PAGE as usize) as i64),
        "the first page says {first_remaining:?} remain of {every}"
    );
    seen.push(format!("paged list: {pages} pages, the first saying how many remain, {} of ours in order", listed.len()));

    // A count of everything without the objects (the store's count_only).
    let all = cms.list_metadata(&ListParams::default()).await?;
    let ours = all.items.iter().filter(|c| c.metadata.name.as_deref().is_some_and(|n| n.starts_with("cm-"))).count();
    seen.push(format!("metadata list: {ours} of ours"));

    // A continue token from before a compaction of the store expires: 410.
    let first = cms.list(&ListParams::default().limit(100)).await?;
    let stale = first.metadata.continue_.clone().context("the first page has a continue token")?;
    cms.create(&PostParams::default(), &configmap("after-first-page", "x")).await?;
    let revision = store_revision(store).await?;
    store.compact(revision, None).await?;
    let expired = cms.list(&ListParams::default().limit(100).continue_token(&stale)).await;
    if let Err(kube::Error::Api(status)) = &expired {
        ensure!(
            status.message.contains("continue parameter is too old"),
            "410's message: {}",
            status.message
        );
    }
    seen.push(format!("continue after compaction: {}", api_error(expired)));

    // An update from a stale read conflicts.
    let mut read = cms.get("cm-00000").await?;
    let mut fresh = read.clone();
    fresh.data = Some(BTreeMap::from([("value".to_owned(), "first writer".to_owned())]));
    cms.replace("cm-00000", &PostParams::default(), &fresh).await?;
    read.data = Some(BTreeMap::from([("value".to_owned(), "second writer".to_owned())]));
    seen.push(format!("update from a stale read: {}", api_error(cms.replace("cm-00000", &PostParams::default(), &read).await)));
    seen.push(format!(
        "after the conflict: {:?}",
        cms.get("cm-00000").await?.data.and_then(|d| d.get("value").cloned())
    ));

    // A watch from a resource version sees exactly what followed, in order,
    // with the old object on deletes.
    let from = cms.list_metadata(&ListParams::default().limit(1)).await?.metadata.resource_version.context("a list RV")?;
    for i in 1..=3 {
        let name = format!("cm-{i:05}");
        cms.patch(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"value": "patched"}})))
            .await?;
    }
    cms.delete("cm-00004", &DeleteParams::default()).await?;
    let mut watch = cms.watch(&WatchParams::default().timeout(20), &from).await?.boxed();
    let mut events = Vec::new();
    while events.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.try_next()).await.context("watch: no event")??;
        match event {
            Some(WatchEvent::Added(c)) => events.push(format!("ADDED {}", c.metadata.name.unwrap_or_default())),
            Some(WatchEvent::Modified(c)) => events.push(format!(
                "MODIFIED {}={}",
                c.metadata.name.unwrap_or_default(),
                c.data.and_then(|d| d.get("value").cloned()).unwrap_or_default()
            )),
            Some(WatchEvent::Deleted(c)) => events.push(format!("DELETED {}", c.metadata.name.unwrap_or_default())),
            Some(WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Error(e)) => bail!("watch error: {} {}", e.code, e.message),
            None => bail!("the watch ended after {events:?}"),
        }
    }
    drop(watch);
    seen.push(format!("watch from a resource version: {}", events.join(", ")));

    // A watch from a compacted resource version: 410 Expired, said in the
    // stream or on the request.
    let compacted = match cms.watch(&WatchParams::default().timeout(10), "1").await {
        Err(err) => api_error(Err::<(), _>(err)),
        Ok(stream) => match stream.boxed().try_next().await {
            Ok(Some(WatchEvent::Error(e))) => format!("{} {}", e.code, e.reason),
            other => format!("unexpected: {:?}", other.map(|e| e.map(|_| "an event"))),
        },
    };
    seen.push(format!("watch from a compacted revision: {compacted}"));

    // Secrets through the watch cache; a streaming list (sendInitialEvents)
    // gives every one as ADDED and then the bookmark that ends them, which
    // needs the store's progress notifications.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    for i in 0..50 {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("s-{i:03}")},
            "stringData": {"password": format!("p{i}")},
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
    }
    let listed = secrets.list(&ListParams::default()).await?.items.len();
    seen.push(format!("secrets listed from the cache: {listed}"));
    let mut stream = secrets.watch(&WatchParams::streaming_lists().timeout(30), "0").await?.boxed();
    let mut initial = BTreeSet::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.try_next()).await.context("streaming list: no event")?? {
            Some(WatchEvent::Added(s)) => {
                initial.insert(s.metadata.name.unwrap_or_default());
            }
            Some(WatchEvent::Bookmark(b)) if b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str) == Some("true") => break,
            Some(WatchEvent::Bookmark(_)) => {}
            other => bail!("streaming list: unexpected {:?}", other.map(|_| "event")),
        }
    }
    ensure!(initial.len() == 50, "streaming list gave {} secrets", initial.len());
    secrets
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "s-late"}}))?)
        .await?;
    let late = loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.try_next()).await.context("no event after the list")?? {
            Some(WatchEvent::Added(s)) => break s.metadata.name.unwrap_or_default(),
            Some(WatchEvent::Bookmark(_)) => {}
            other => bail!("after the streaming list: unexpected {:?}", other.map(|_| "event")),
        }
    };
    drop(stream);
    seen.push(format!("streaming list: {} initial events, an initial-events-end bookmark, then ADDED {late}", initial.len()));

    // A Deployment: the controller-manager makes its ReplicaSet and Pods
    // (which nothing runs); deleted in the foreground, the garbage
    // collector removes them first.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:1"}]},
            },
        },
    }))?;
    deployments.create(&PostParams::default(), &deployment).await?;
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let made = eventually("the Deployment's ReplicaSet and Pods", Duration::from_secs(60), || async {
        let rs = replicasets.list(&ListParams::default().labels("app=web")).await?.items;
        let pods = pods.list(&ListParams::default().labels("app=web")).await?.items;
        let owned = rs.iter().all(|r| r.metadata.owner_references.iter().flatten().any(|o| o.kind == "Deployment" && o.name == "web"));
        Ok((rs.len() == 1 && pods.len() == 2 && owned).then_some((rs.len(), pods.len())))
    })
    .await?;
    seen.push(format!("deployment web: {} replicaset owned by it, {} pods", made.0, made.1));
    deployments.delete("web", &DeleteParams::foreground()).await?;
    eventually("the foreground deletion of the Deployment", Duration::from_secs(60), || async {
        let gone = deployments.get_opt("web").await?.is_none();
        let rs = replicasets.list(&ListParams::default().labels("app=web")).await?.items.len();
        let pods = pods.list(&ListParams::default().labels("app=web")).await?.items.len();
        Ok((gone && rs == 0 && pods == 0).then_some(()))
    })
    .await?;
    seen.push("deployment web deleted in the foreground with its replicaset and pods".into());

    // A finalizer holds a deletion until it is removed.
    let held: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]},
    }))?;
    cms.create(&PostParams::default(), &held).await?;
    cms.delete("held", &DeleteParams::default()).await?;
    let deleting = cms.get("held").await?;
    seen.push(format!("deleted with a finalizer: still there, deletionTimestamp set: {}", deleting.metadata.deletion_timestamp.is_some()));
    cms.patch("held", &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}))).await?;
    seen.push(format!("finalizer removed: {}", if cms.get_opt("held").await?.is_none() { "gone" } else { "still there" }));

    // A CustomResourceDefinition, its schema and a CEL rule enforced, and
    // custom resources listed in pages.
    cp.kubectl_stdin(&["apply", "-f", "-"], WIDGET_CRD)?;
    cp.kubectl(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=60s"])?;
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let resource = kube::discovery::ApiResource::from_gvk(&gvk);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
    for i in 0..100 {
        let w: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": format!("w-{i:03}")},
            "spec": {"size": i},
        }))?;
        widgets.create(&PostParams::default(), &w).await?;
    }
    let bad: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "too-big"}, "spec": {"size": 1000},
    }))?;
    seen.push(format!("a widget the CEL rule refuses: {}", api_error(widgets.create(&PostParams::default(), &bad).await)));
    let mut count = 0;
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(30);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = widgets.list(&params).await?;
        pages += 1;
        count += page.items.len();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    seen.push(format!("widgets: {count} in {pages} pages"));

    // The namespace deleted: the namespace controller empties it.
    cp.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    eventually("the namespace's deletion", Duration::from_secs(120), || async {
        Ok(Api::<Namespace>::all(client.clone()).get_opt(NS).await?.is_none().then_some(()))
    })
    .await?;
    let left = store.get(format!("/registry/configmaps/{NS}/"), Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await?;
    seen.push(format!("namespace {NS} deleted; configmaps left in the store: {}", left.count()));

    // kube-apiserver's own compactor has run (every 5 s here): it keeps
    // `compact_rev_key` and compacts the store to the revision it saw a
    // round before.
    let before = store_revision(store).await?;
    eventually("kube-apiserver's compaction", Duration::from_secs(60), || {
        let mut store = store.clone();
        async move {
            let key = store.get("compact_rev_key", None).await?;
            let Some(kv) = key.kvs().first() else { return Ok(None) };
            let compacted = store.get("/registry/health", Some(etcd_client::GetOptions::new().with_revision(before))).await;
            let is_compacted = matches!(&compacted, Err(etcd_client::Error::GRpcStatus(s)) if s.message() == "etcdserver: mvcc: required revision has been compacted");
            Ok((kv.version() >= 2 && is_compacted).then_some(()))
        }
    })
    .await?;
    seen.push("kube-apiserver compacted the store past the script's revisions".into());

    // Its feature checker took the store for one that answers progress
    // requests (the version raftkv reports), which consistent reads from
    // the watch cache and streaming lists rely on.
    let log = std::fs::read_to_string(cp.log_path("kube-apiserver"))?;
    for bad in ["RequestWatchProgress feature is not supported", "Failed to parse etcd version"] {
        ensure!(!log.contains(bad), "kube-apiserver logged {bad:?}");
    }
    Ok(seen)
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
            x-kubernetes-validations:
            - rule: "self.size < 500"
              message: "size must be below 500"
"#;

async fn run_script(what: &str, etcd: &[String]) -> anyhow::Result<Vec<String>> {
    let cp = ControlPlane::start_with(etcd, options()).await?;
    let mut store = etcd_client::Client::connect(etcd, None).await?;
    let seen = storage_script(&cp, &mut store).await.with_context(|| format!("the script on {what}"))?;
    eprintln!("{what}:\n  {}", seen.join("\n  "));
    Ok(seen)
}

fn etcd_36() -> anyhow::Result<std::path::PathBuf> {
    let releases = binaries::etcd_releases()?;
    releases
        .into_iter()
        .find(|(v, _)| v.starts_with("3.6."))
        .map(|(_, p)| p)
        .context("etcd 3.6 is not among the Go test peers (tests/go/etcd-3.6)")
}

/// What the script observes on etcd 3.6, run once per test binary.
static REFERENCE: OnceCell<Vec<String>> = OnceCell::const_new();

async fn reference() -> anyhow::Result<&'static Vec<String>> {
    REFERENCE
        .get_or_try_init(|| async {
            let etcd = Server::start_etcd_release(&etcd_36()?).await?;
            run_script("etcd 3.6", &[etcd.endpoint()]).await
        })
        .await
}

/// The script on a 1-member raftkv and on etcd 3.6 observes the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kube_apiserver_on_one_raftkv_member_sees_what_it_sees_on_etcd() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let reference = reference().await?;
    let raftkv = Server::start(Flavor::Raftkv).await?;
    let seen = run_script("raftkv, one member", &[raftkv.endpoint()]).await?;
    ensure!(&seen == reference, "raftkv and etcd differ:\n{}", raftkv_tests::diff::unified("etcd", &reference.join("\n"), "raftkv", &seen.join("\n"), 3));
    Ok(())
}

/// The same on a 3-member raftkv cluster, the apiserver given every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kube_apiserver_on_three_raftkv_members_sees_what_it_sees_on_etcd() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let reference = reference().await?;
    let cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    let seen = run_script("raftkv, three members", &cluster.endpoints()).await?;
    ensure!(&seen == reference, "raftkv and etcd differ:\n{}", raftkv_tests::diff::unified("etcd", &reference.join("\n"), "raftkv", &seen.join("\n"), 3));
    Ok(())
}

/// Names a watch saw ADDED, and why it could not go on if it could not.
#[derive(Default)]
struct Seen {
    names: BTreeSet<String>,
    resumed: usize,
    failed: Option<String>,
}

/// Watches `api` from resource version `from` for ever, resuming from the
/// last version seen whenever the stream ends or fails, as an informer
/// does; a 410 (the version compacted) is a failure here.
async fn watch_names<K>(api: Api<K>, mut from: String, seen: Arc<std::sync::Mutex<Seen>>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    loop {
        let stream = match api.watch(&WatchParams::default().timeout(30), &from).await {
            Ok(stream) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = stream.boxed();
        loop {
            match stream.try_next().await {
                Ok(Some(WatchEvent::Added(o))) => {
                    from = o.meta().resource_version.clone().unwrap_or_default();
                    seen.lock().expect("the watch record").names.insert(o.meta().name.clone().unwrap_or_default());
                }
                Ok(Some(WatchEvent::Modified(o) | WatchEvent::Deleted(o))) => {
                    from = o.meta().resource_version.clone().unwrap_or_default();
                }
                Ok(Some(WatchEvent::Bookmark(b))) => from = b.metadata.resource_version,
                Ok(Some(WatchEvent::Error(e))) if e.code == 410 => {
                    seen.lock().expect("the watch record").failed = Some(format!("410 from {from}: {}", e.message));
                    return;
                }
                Ok(Some(WatchEvent::Error(_))) | Ok(None) | Err(_) => break,
            }
        }
        seen.lock().expect("the watch record").resumed += 1;
    }
}

fn names_of<K: kube::Resource + Clone>(list: kube::api::ObjectList<K>) -> impl Iterator<Item = String> {
    list.items.into_iter().filter_map(|o| o.meta().name.clone())
}

/// kube-apiserver writing to a 3-member raftkv cluster whose leader is
/// killed (-9) under load and restarted: every create kube-apiserver
/// acknowledged is there at the end, and watches (straight on the store
/// for ConfigMaps, through the watch cache for Secrets) resume from their
/// last resource version and see every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raftkv_leader_killed_under_kube_apiserver_load_loses_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    let options = Options { controller_manager: false, ..options() };
    let cp = ControlPlane::start_with(&cluster.endpoints(), options).await?;
    let client = cp.client().await?;
    cp.kubectl(&["create", "namespace", NS])?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let cm_seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let secret_seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let from = cms.list_metadata(&ListParams::default()).await?.metadata.resource_version.context("RV")?;
    let cm_watch = tokio::spawn(watch_names(cms.clone(), from, cm_seen.clone()));
    let from = secrets.list_metadata(&ListParams::default()).await?.metadata.resource_version.context("RV")?;
    let secret_watch = tokio::spawn(watch_names(secrets.clone(), from, secret_seen.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (cms, secrets, stop) = (cms.clone(), secrets.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{n:05}");
                n += 1;
                let result = if n % 2 == 0 {
                    cms.create(&PostParams::default(), &configmap(&name, "x")).await.map(drop)
                } else {
                    let secret: Secret = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
                    secrets.create(&PostParams::default(), &secret).await.map(drop)
                };
                match result {
                    Ok(()) => acked.push((n % 2 == 0, name)),
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            anyhow::Ok((acked, failed))
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let leader = cluster.leader().await?;
    cluster.kill9(leader)?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.restart(leader).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked_cms, mut acked_secrets) = (BTreeSet::new(), BTreeSet::new());
    let mut failed = 0;
    for writer in writers {
        let (names, errors) = writer.await??;
        for (is_cm, name) in names {
            if is_cm { acked_cms.insert(name) } else { acked_secrets.insert(name) };
        }
        failed += errors;
    }
    ensure!(acked_cms.len() + acked_secrets.len() > 100, "only {} creates were acknowledged", acked_cms.len() + acked_secrets.len());

    let listed: BTreeSet<String> = names_of(cms.list_metadata(&ListParams::default()).await?)
        .chain(names_of(secrets.list_metadata(&ListParams::default()).await?))
        .collect();
    let lost: Vec<_> = acked_cms.iter().chain(&acked_secrets).filter(|n| !listed.contains(*n)).collect();
    ensure!(lost.is_empty(), "{} acknowledged creates are not listed: {:?}", lost.len(), &lost[..lost.len().min(10)]);

    for (what, seen, acked) in [("configmaps", &cm_seen, &acked_cms), ("secrets", &secret_seen, &acked_secrets)] {
        eventually(&format!("the {what} watch seeing every acknowledged create"), Duration::from_secs(60), || async {
            let seen = seen.lock().expect("the watch record");
            if let Some(failure) = &seen.failed {
                bail!("the {what} watch could not resume: {failure}");
            }
            Ok(acked.is_subset(&seen.names).then_some(()))
        })
        .await?;
        eprintln!("{what}: {} acknowledged, the watch resumed {} times", acked.len(), seen.lock().expect("the watch record").resumed);
    }
    cm_watch.abort();
    secret_watch.abort();
    eprintln!("{failed} creates failed during the failover");
    Ok(())
}
