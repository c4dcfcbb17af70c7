//! Controllers whose watches back off one by one.
//!
//! kube-runtime's `Controller::new` merges its own watch and every `owns`
//! watch into one stream behind one backoff: an error from any watch pauses
//! all of them, and the pause doubles with every error, whichever watch
//! raised it. After kube-apiserver restarts, each watch meets a refused
//! connection, then 403s while the new server loads its RBAC cache, then
//! a 410 for its old resourceVersion; one after another these pushed the
//! shared pause past 50 s, and a KvCluster created after the restart waited
//! minutes for its first reconcile.
//!
//! Here, as client-go's reflectors do, each watch has a backoff of its own
//! (kube-runtime's default: 800 ms doubling to 30 s, reset by any success),
//! and its errors are logged and dropped before the merge, so the
//! controller's stream never pauses for them; a 410 (resourceVersion
//! expired) skips the backoff and lists again at once.

use std::fmt::Debug;
use std::hash::Hash;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::Controller;
#[allow(deprecated)] // kube's own `owns` still uses it
use kube::runtime::watcher::{self, metadata_watcher};
use kube::runtime::{WatchStreamExt, reflector, watcher as watch_objects};
use serde::de::DeserializeOwned;

/// Keeps the successes of a watch stream; logs each error, which the
/// stream's own backoff has already paced.
fn without_errors<T: Send + 'static>(
    what: String,
    stream: impl Stream<Item = Result<T, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send + 'static {
    stream.filter_map(move |item| {
        let outcome = match item {
            Ok(object) => Some(Ok(object)),
            Err(error) => {
                tracing::warn!(watch = %what, error = %error, "watch failed; retrying after its backoff");
                None
            }
        };
        std::future::ready(outcome)
    })
}

/// Drops (logging it) a watch's 410 Gone, its resourceVersion expired:
/// the watcher lists afresh on its next poll, at once, as client-go's
/// reflectors relist; behind the backoff, the relist waited for a pause
/// grown by the connection errors of an API server restart (up to 30 s
/// doubled by jitter), and a KvCluster created meanwhile waited that long
/// for its first reconcile.
fn relist_at_once<T: Send + 'static>(
    what: String,
    stream: impl Stream<Item = Result<T, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send + 'static {
    stream.filter_map(move |item| {
        let outcome = match item {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(watch = %what, error = %status.message, "watch expired; listing again");
                None
            }
            other => Some(other),
        };
        std::future::ready(outcome)
    })
}

/// A controller of `K` (as `Controller::new`) whose main watch backs off
/// alone.
pub fn controller<K>(api: Api<K>) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let objects = relist_at_once(K::kind(&()).into_owned(), watch_objects(api, watcher::Config::default()))
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(without_errors(K::kind(&()).into_owned(), objects), reader)
}

/// The objects of kind `Child` the controller owns (as `Controller::owns`),
/// watched by metadata alone with a backoff of their own.
pub fn owned<Child>(
    api: Api<Child>,
) -> impl Stream<Item = Result<PartialObjectMeta<Child>, watcher::Error>> + Send + 'static
where
    Child: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    PartialObjectMeta<Child>: Resource<DynamicType = ()>,
{
    #[allow(deprecated)]
    let touched = relist_at_once(Child::kind(&()).into_owned(), metadata_watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    without_errors(Child::kind(&()).into_owned(), touched)
}

/// `Controller::owns_stream` for [`owned`] objects of each kind given.
pub trait OwnsEach<K: Resource> {
    fn owning<Child>(self, api: Api<Child>) -> Self
    where
        Child:
            Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        PartialObjectMeta<Child>: Resource<DynamicType = ()>;
}

impl<K> OwnsEach<K> for Controller<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Unpin,
{
    fn owning<Child>(self, api: Api<Child>) -> Self
    where
        Child:
            Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        PartialObjectMeta<Child>: Resource<DynamicType = ()>,
    {
        self.owns_stream(owned(api))
    }
}
