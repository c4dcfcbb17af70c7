//! An in-memory Kubernetes API server behind kube's tower-test mock: enough
//! of GET, LIST, PATCH (server-side apply, merge, the finalizer's JSON
//! patches), DELETE and POST for the operator's objects, with a log of every
//! request and failures on demand. The StatefulSet controller and the
//! kubelet are played by [`World::tick`] in `main.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

#[derive(Default)]
pub struct ApiState {
    /// Objects by path, e.g. `/apis/apps/v1/namespaces/prod/statefulsets/demo`.
    pub objects: BTreeMap<String, Value>,
    /// `METHOD path` of every request, with the recorded operation for
    /// status patches; shared with the fake etcd so the order shows.
    pub log: Vec<String>,
    /// (method, path fragment, times): answer 500 that many times.
    pub failures: Vec<(String, String, usize)>,
    next_uid: u64,
}

#[derive(Clone, Default)]
pub struct FakeApi(pub Arc<Mutex<ApiState>>);

const COLLECTIONS: &[&str] = &[
    "pods",
    "persistentvolumeclaims",
    "statefulsets",
    "services",
    "configmaps",
    "events",
    "jobs",
    "secrets",
    "kvbackups",
    "kvbackupschedules",
];

/// (group, resource, verb) of every request any fake API in this test
/// process answered: what the operator's code really calls.
pub static CALLS: Mutex<BTreeSet<(String, String, String)>> = Mutex::new(BTreeSet::new());

/// The RBAC view of a request: API group, resource (with its subresource),
/// verb; as the API server's authorizer sees it.
pub fn rbac_attributes(method: &str, path: &str, query: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => ("?", &[][..]),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        _ => (String::from("?"), false),
    };
    let watch = query
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1");
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "?",
    };
    (group.to_owned(), resource, verb.to_owned())
}

fn status(code: StatusCode, reason: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": reason, "reason": reason, "code": code.as_u16()}),
    )
}

impl FakeApi {
    pub fn state(&self) -> MutexGuard<'_, ApiState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                let (code, value) = api.serve(&parts, &body);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
                    .expect("a response");
                send.send_response(response);
            }
        });
        kube::Client::new(service, "prod")
    }

    pub fn insert(&self, path: &str, mut object: Value) {
        let mut state = self.state();
        state.next_uid += 1;
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}", state.next_uid));
        }
        state.objects.insert(path.to_owned(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state().objects.get(path).cloned()
    }

    pub fn remove(&self, path: &str) -> Option<Value> {
        self.state().objects.remove(path)
    }

    pub fn log(&self, line: String) {
        self.state().log.push(line);
    }

    pub fn fail(&self, method: &str, fragment: &str, times: usize) {
        self.state()
            .failures
            .push((method.to_owned(), fragment.to_owned(), times));
    }

    fn serve(&self, parts: &http::request::Parts, body: &[u8]) -> (StatusCode, Value) {
        let method = parts.method.as_str().to_owned();
        let path = parts.uri.path().to_owned();
        // RBAC, as the chart grants it: a call it does not allow is refused
        // as a real API server would refuse it.
        let (group, resource, verb) =
            rbac_attributes(&method, &path, parts.uri.query().unwrap_or_default());
        if !raftkv_operator::rbac::allows(&group, &resource, &verb) {
            self.state().log.push(format!("{method} {path} -> 403"));
            return status(StatusCode::FORBIDDEN, "Forbidden");
        }
        // A server-side apply that makes its object is also a create, and
        // the API server authorizes it as one.
        let is_apply = parts.headers.get("content-type").is_some_and(|v| v.as_bytes() == b"application/apply-patch+yaml");
        let creates = method == "PATCH" && is_apply && !resource.contains('/') && !self.state().objects.contains_key(&path);
        if creates {
            if !raftkv_operator::rbac::allows(&group, &resource, "create") {
                self.state().log.push(format!("{method} {path} (creating) -> 403"));
                return status(StatusCode::FORBIDDEN, "Forbidden");
            }
            CALLS.lock().unwrap_or_else(PoisonError::into_inner).insert((group.clone(), resource.clone(), "create".to_owned()));
        }
        CALLS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((group, resource, verb));
        let mut state = self.state();
        if let Some(f) = state
            .failures
            .iter_mut()
            .find(|(m, p, n)| *m == method && path.contains(p.as_str()) && *n > 0)
        {
            f.2 -= 1;
            state.log.push(format!("{method} {path} -> 500"));
            return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
        }
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (base, subresource) = match path.strip_suffix("/status") {
            Some(base) if !path.ends_with("/pods/status") => (base.to_owned(), Some("status")),
            _ => (path.clone(), None),
        };
        let line = match (subresource, method.as_str()) {
            (Some(_), _) => format!("{method} {path} operation={}", body["status"]["operation"]),
            (None, "POST") => format!("{method} {path} reason={}", body["reason"]),
            _ => format!("{method} {path}"),
        };
        state.log.push(line);
        let last = base.rsplit('/').next().unwrap_or_default();
        match method.as_str() {
            "GET" if COLLECTIONS.contains(&last) => {
                let prefix = format!("{base}/");
                let selector = label_selector(parts.uri.query().unwrap_or_default());
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .filter(|(_, v)| selector.iter().all(|(key, value)| v["metadata"]["labels"][key] == json!(value)))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            "GET" => match state.objects.get(&base) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            // An object with finalizers is only marked; it goes once the
            // last finalizer is patched away.
            "DELETE" => match state.objects.get_mut(&base) {
                Some(object) if object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) => {
                    if object["metadata"]["deletionTimestamp"].is_null() {
                        object["metadata"]["deletionTimestamp"] = json!("2026-12-06T00:00:00Z");
                    }
                    (StatusCode::OK, object.clone())
                }
                Some(_) => (StatusCode::OK, state.objects.remove(&base).unwrap_or_default()),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            "POST" => {
                // Stored under its name, with what the server fills in; a
                // name taken is a conflict.
                let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                    return (StatusCode::CREATED, body);
                };
                let key = format!("{base}/{name}");
                if state.objects.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                let mut object = body.clone();
                state.next_uid += 1;
                object["metadata"]["uid"] = json!(format!("uid-{}", state.next_uid));
                if object["metadata"]["creationTimestamp"].is_null() {
                    object["metadata"]["creationTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap_or_default().to_string());
                }
                state.objects.insert(key, object.clone());
                (StatusCode::CREATED, object)
            }
            "PATCH" => {
                let content_type = parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let existing = state.objects.get(&base).cloned();
                let patched = match (subresource, content_type) {
                    (Some(_), _) => {
                        let Some(mut object) = existing else {
                            return status(StatusCode::NOT_FOUND, "NotFound");
                        };
                        object["status"] = body["status"].clone();
                        object
                    }
                    (None, "application/merge-patch+json") => {
                        let Some(mut object) = existing else {
                            return status(StatusCode::NOT_FOUND, "NotFound");
                        };
                        merge_patch(&mut object, &body);
                        object
                    }
                    (None, "application/json-patch+json") => {
                        let Some(mut object) = existing else {
                            return status(StatusCode::NOT_FOUND, "NotFound");
                        };
                        json_patch_finalizers(&mut object, &body);
                        object
                    }
                    (None, _) => {
                        // Server-side apply: the applied fields replace ours;
                        // what the server owns (uid, status) stays.
                        let mut object = body.clone();
                        match existing {
                            Some(old) => {
                                object["metadata"]["uid"] = old["metadata"]["uid"].clone();
                                if !old["status"].is_null() {
                                    object["status"] = old["status"].clone();
                                }
                            }
                            None => {
                                state.next_uid += 1;
                                object["metadata"]["uid"] =
                                    json!(format!("uid-{}", state.next_uid));
                            }
                        }
                        object
                    }
                };
                let released = !patched["metadata"]["deletionTimestamp"].is_null()
                    && patched["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
                if released {
                    state.objects.remove(&base);
                } else {
                    state.objects.insert(base, patched.clone());
                }
                (StatusCode::OK, patched)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

/// `labelSelector=a%3Db,c%3Dd` as (key, value) pairs (equality only).
fn label_selector(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|q| q.strip_prefix("labelSelector="))
        .flat_map(|s| s.split("%2C").flat_map(|p| p.split(',')).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|p| {
            let p = p.replace("%3D", "=").replace("%2F", "/");
            p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// RFC 7386: objects merge key by key, null removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in fields {
        if v.is_null() {
            if let Some(t) = target.as_object_mut() {
                t.remove(k);
            }
        } else {
            merge_patch(&mut target[k], v);
        }
    }
}

/// The finalizer's patches: add the list, append, remove at an index.
fn json_patch_finalizers(object: &mut Value, patch: &Value) {
    for op in patch.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default();
        match (op["op"].as_str(), path) {
            (Some("add"), "/metadata/finalizers") => {
                object["metadata"]["finalizers"] = op["value"].clone()
            }
            (Some("add"), "/metadata/finalizers/-") => {
                if let Some(list) = object["metadata"]["finalizers"].as_array_mut() {
                    list.push(op["value"].clone());
                }
            }
            (Some("remove"), p) if p.starts_with("/metadata/finalizers/") => {
                let index: usize = p
                    .rsplit('/')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(usize::MAX);
                if let Some(list) = object["metadata"]["finalizers"].as_array_mut()
                    && index < list.len()
                {
                    list.remove(index);
                }
            }
            _ => {}
        }
    }
}
