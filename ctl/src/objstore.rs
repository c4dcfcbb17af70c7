//! Snapshot files in object storage, through the `object_store` crate:
//! `s3://BUCKET/KEY` (AWS S3 and S3-compatible stores), `gs://BUCKET/KEY`
//! (Google Cloud Storage), `az://CONTAINER/KEY` (Azure Blob Storage; also
//! `azure://`, `abfs://`, `abfss://` and Azure's `https://` URLs) and
//! `file:///PATH`.
//!
//! Endpoints and credentials come from the environment variables each
//! store's own builder reads (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`,
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, ...; `GOOGLE_SERVICE_ACCOUNT`,
//! `GOOGLE_SERVICE_ACCOUNT_KEY`, ...; `AZURE_STORAGE_ACCOUNT_NAME`,
//! `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR`, ...), which is
//! how a Kubernetes Job passes them from a Secret.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreScheme};

use crate::error::CtlError;

/// The URL schemes read as objects; anything else is a local file name.
const SCHEMES: [&str; 9] = ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "file"];

/// Whether a command's argument names an object rather than a local file.
/// Azure's `https://ACCOUNT.blob.core.windows.net/...` URLs count too.
pub fn is_url(arg: &str) -> bool {
    match arg.split_once("://") {
        Some((scheme, _)) if SCHEMES.contains(&scheme) => true,
        Some(("https", rest)) => rest.split('/').next().is_some_and(|host| {
            host.ends_with(".blob.core.windows.net") || host.ends_with(".dfs.core.windows.net") || host.ends_with(".amazonaws.com")
        }),
        _ => false,
    }
}

/// One object: its store, its key there, and the URL that named it.
pub struct Object {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    pub url: String,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// The object a URL names, with its store configured from the environment.
pub fn open(arg: &str) -> Result<Object, CtlError> {
    let url = url::Url::parse(arg).map_err(|e| CtlError::bad_args(format!("invalid object URL {arg:?}: {e}")))?;
    let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|e| CtlError::bad_args(format!("invalid object URL {arg:?}: {e}")))?;
    if path.as_ref().is_empty() {
        return Err(CtlError::bad_args(format!("object URL {arg:?} names a bucket or directory, not an object")));
    }
    let built: Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
        ObjectStoreScheme::AmazonS3 => AmazonS3Builder::from_env().with_url(arg).build().map(|s| Arc::new(s) as _),
        ObjectStoreScheme::GoogleCloudStorage => GoogleCloudStorageBuilder::from_env().with_url(arg).build().map(|s| Arc::new(s) as _),
        ObjectStoreScheme::MicrosoftAzure => MicrosoftAzureBuilder::from_env().with_url(arg).build().map(|s| Arc::new(s) as _),
        ObjectStoreScheme::Local => Ok(Arc::new(LocalFileSystem::new())),
        other => return Err(CtlError::bad_args(format!("object URL {arg:?}: {other:?} is not supported"))),
    };
    let store = built.map_err(|e| store_error(arg, e))?;
    Ok(Object { store, path, url: arg.to_owned() })
}

/// A store's error, with the object it concerns; the store's own message
/// (refused credentials, a missing bucket) is kept whole.
pub fn store_error(url: &str, e: object_store::Error) -> CtlError {
    CtlError::error(format!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_file_names() {
        for url in ["s3://b/k", "gs://b/k", "az://c/k", "abfss://c@a.dfs.core.windows.net/k", "file:///tmp/x", "https://a.blob.core.windows.net/c/k"] {
            assert!(is_url(url), "{url}");
        }
        for name in ["snap.db", "/tmp/snap.db", "./s3://x", "http://example.com/x", "https://example.com/x"] {
            assert!(!is_url(name), "{name}");
        }
    }

    #[test]
    fn a_url_without_a_key_is_refused() {
        let e = open("file:///").expect_err("no key");
        assert!(e.message.contains("not an object"), "{e}");
        let e = open("s3://bucket").expect_err("no key");
        assert!(e.message.contains("not an object"), "{e}");
    }

    #[test]
    fn local_objects_keep_their_path() {
        let o = open("file:///tmp/backups/a.snap").expect("local");
        assert_eq!(o.path.as_ref(), "tmp/backups/a.snap");
    }
}
