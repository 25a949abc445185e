//! Where the Comms server keeps tenants' files: the local folder `<data_dir>/tenants/` (the default), or an
//! S3-compatible object store (`[storage] url = "s3://bucket/prefix"`, docs/scale-out.md) that several replicas
//! share.
//!
//! The object layout mirrors the folder one under the URL's prefix: `tenants/<t>/sftp/...` (what the tenant's
//! key sees over SFTP: `upload/<batch>/`, `download/<file>/`), `tenants/<t>/uploads/...` (the state of SFTP
//! uploads in progress, [`ferry_sftp::store`]) and `tenants/<t>/batches/<batch>/` (completed batches, out of
//! the tenant's reach). The SFTP server, the batch completion, the relay, the downstream worker and retention
//! all go through [`Files`].
//!
//! Endpoint, region and credentials come from the environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), or `endpoint`/`region` in the config.
//! Credentials are never logged: errors shown are the operation and the kind of failure
//! ([`ferry_sftp::store::describe`]).

use std::path::Path as FsPath;

use anyhow::{Context, bail};
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

pub use ferry_sftp::store::{Bucket, StoreRoot};

/// `[storage]` in comms.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Empty (the default): the local folder `<data_dir>/tenants/`. `s3://bucket` or `s3://bucket/prefix`: an
    /// S3-compatible object store.
    pub url: String,
    /// The S3 endpoint (`https://s3.eu-central-1.amazonaws.com`, `https://minio.internal:9000`). Empty:
    /// `AWS_ENDPOINT_URL` from the environment, else AWS.
    pub endpoint: String,
    /// Empty: `AWS_REGION` (or `AWS_DEFAULT_REGION`) from the environment, else `us-east-1`.
    pub region: String,
    /// Allow a plain-http endpoint. Only accepted for a loopback endpoint (a test server on 127.0.0.1).
    pub allow_http: bool,
    /// Part size of uploads in MiB (at least 5, the S3 minimum; default 8): memory per SFTP upload in progress.
    pub part_size_mib: usize,
}

impl StorageConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.url.is_empty() {
            return Ok(());
        }
        let Some(rest) = self.url.strip_prefix("s3://") else {
            bail!("[storage] url must be empty (the local folder) or s3://bucket/prefix (got {:?})", self.url);
        };
        if rest.split('/').next().is_none_or(str::is_empty) {
            bail!("[storage] url {:?} names no bucket: s3://bucket/prefix", self.url);
        }
        if self.part_size_mib != 0 && self.part_size_mib < 5 {
            bail!("[storage] part_size_mib must be at least 5 (the smallest part S3 accepts)");
        }
        Ok(())
    }

    fn part_size(&self) -> usize {
        let mib = if self.part_size_mib == 0 { 8 } else { self.part_size_mib };
        mib.saturating_mul(1024 * 1024)
    }
}

/// Where tenants' files live.
#[derive(Debug, Clone)]
pub enum Files {
    /// `<data_dir>/tenants/` (the layout of today).
    Local,
    /// An object store bucket (and prefix).
    Object(Bucket),
}

impl Files {
    /// Opens the store `cfg` names (checks that the bucket answers).
    pub async fn open(cfg: &StorageConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        if cfg.url.is_empty() {
            return Ok(Files::Local);
        }
        // object_store's HTTP client takes rustls' process-wide provider: ring, as everywhere in Ferry
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rest = cfg.url.trim_start_matches("s3://");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if !cfg.endpoint.is_empty() {
            b = b.with_endpoint(&cfg.endpoint);
        }
        if !cfg.region.is_empty() {
            b = b.with_region(&cfg.region);
        } else if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            b = b.with_region("us-east-1");
        }
        let endpoint = if cfg.endpoint.is_empty() {
            std::env::var("AWS_ENDPOINT_URL").unwrap_or_default()
        } else {
            cfg.endpoint.clone()
        };
        if endpoint.starts_with("http://") {
            if !cfg.allow_http {
                bail!("[storage] the endpoint is plain http: set allow_http = true (loopback test servers only)");
            }
            let host =
                url::Url::parse(&endpoint).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
            let loopback = host == "localhost"
                || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                bail!("[storage] allow_http is accepted for a loopback endpoint only (got host {host:?}); use https");
            }
            b = b.with_allow_http(true);
        }
        if !endpoint.is_empty() {
            // S3-compatible servers other than AWS mostly want path-style requests
            b = b.with_virtual_hosted_style_request(false);
        }
        let s3 =
            b.build().map_err(|e| anyhow::anyhow!("[storage] {}", ferry_sftp::store::describe("configure", &e)))?;
        let prefix = Key::from_iter(prefix.split('/').filter(|p| !p.is_empty()));
        let bucket_ = Bucket::new(s3, prefix, cfg.part_size());
        // one request now, so a wrong bucket, endpoint or credentials stop the start with a clear message
        let probe = bucket_.key(["tenants"]);
        let mut l = bucket_.os.list(Some(&probe));
        if let Some(Err(e)) = l.next().await {
            bail!("[storage] cannot reach the bucket {bucket:?}: {}", ferry_sftp::store::describe("list", &e));
        }
        drop(l);
        tracing::info!(bucket, prefix = %bucket_.prefix, "tenant files in object storage");
        Ok(Files::Object(bucket_))
    }

    pub fn bucket(&self) -> Option<&Bucket> {
        match self {
            Files::Local => None,
            Files::Object(b) => Some(b),
        }
    }
}

/// A tenant's SFTP root in the store.
pub fn tenant_root(b: &Bucket, tenant: &str) -> StoreRoot {
    StoreRoot {
        bucket: b.clone(),
        files: b.key(["tenants", tenant, "sftp"]),
        uploads: b.key(["tenants", tenant, "uploads"]),
    }
}

/// `tenants/<t>/sftp/<parts>`
pub fn sftp_key(b: &Bucket, tenant: &str, parts: &[&str]) -> Key {
    b.key(["tenants", tenant, "sftp"].into_iter().chain(parts.iter().copied()))
}

/// `tenants/<t>/batches/<batch>/<parts>`
pub fn batch_key(b: &Bucket, tenant: &str, batch: &str, parts: &[&str]) -> Key {
    b.key(["tenants", tenant, "batches", batch].into_iter().chain(parts.iter().copied()))
}

fn err(op: &str, e: &object_store::Error) -> anyhow::Error {
    tracing::debug!("object store {op}: {e}");
    anyhow::anyhow!(ferry_sftp::store::describe(op, e))
}

/// The size of the object `key`, or `None`.
pub async fn size_of(b: &Bucket, key: &Key) -> anyhow::Result<Option<u64>> {
    match b.os.head(key).await {
        Ok(m) => Ok(Some(m.size)),
        Err(e) if ferry_sftp::store::is_not_found(&e) => Ok(None),
        Err(e) => Err(err("stat", &e)),
    }
}

/// Size and SHA-256 of the object `key`, read as a stream.
pub async fn sha256_of(b: &Bucket, key: &Key) -> anyhow::Result<(u64, String)> {
    let r = b.os.get(key).await.map_err(|e| err("read", &e))?;
    let mut s = r.into_stream();
    let mut sha = sha2::Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| err("read", &e))?;
        sha.update(&chunk);
        n += chunk.len() as u64;
    }
    Ok((n, hex::encode(sha.finalize())))
}

/// Moves (copy, then delete) `from` to `to`.
pub async fn move_object(b: &Bucket, from: &Key, to: &Key) -> anyhow::Result<()> {
    b.os.copy(from, to).await.map_err(|e| err("copy", &e))?;
    ferry_sftp::store::delete_if_exists(b, from).await.map_err(|e| err("delete", &e))
}

/// Uploads the local file `local` to `key` as a stream (multipart past one part; the object appears complete).
pub async fn put_file(b: &Bucket, local: &FsPath, key: &Key) -> anyhow::Result<u64> {
    let mut src = tokio::fs::File::open(local).await.with_context(|| format!("cannot open {}", local.display()))?;
    let mut w = object_store::buffered::BufWriter::with_capacity(b.os.clone(), key.clone(), b.part_size);
    let n = match tokio::io::copy(&mut src, &mut w).await {
        Ok(n) => n,
        Err(e) => {
            let _ = w.abort().await;
            bail!("uploading to the object store failed: {}", io_kind(&e));
        }
    };
    w.shutdown().await.map_err(|e| anyhow::anyhow!("uploading to the object store failed: {}", io_kind(&e)))?;
    Ok(n)
}

fn io_kind(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<object_store::Error>()) {
        Some(os) => ferry_sftp::store::describe("write", os),
        None => e.kind().to_string(),
    }
}

/// Downloads the object `key` into the local file `local` as a stream.
pub async fn get_file(b: &Bucket, key: &Key, local: &FsPath) -> anyhow::Result<u64> {
    let r = b.os.get(key).await.map_err(|e| err("read", &e))?;
    let mut s = r.into_stream();
    let mut f = tokio::fs::File::create(local).await.with_context(|| format!("cannot create {}", local.display()))?;
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| err("read", &e))?;
        f.write_all(&chunk).await.with_context(|| format!("cannot write {}", local.display()))?;
        n += chunk.len() as u64;
    }
    f.sync_all().await?;
    Ok(n)
}

/// Deletes every object under `prefix`; returns how many.
pub async fn delete_prefix(b: &Bucket, prefix: &Key) -> anyhow::Result<usize> {
    let locations = b.os.list(Some(prefix)).map(|r| r.map(|m| m.location)).boxed();
    let mut deleted = b.os.delete_stream(locations);
    let mut n = 0;
    while let Some(r) = deleted.next().await {
        match r {
            Ok(_) => n += 1,
            Err(e) if ferry_sftp::store::is_not_found(&e) => {}
            Err(e) => return Err(err("delete", &e)),
        }
    }
    Ok(n)
}

/// The names directly under `prefix` that are "folders" (have objects below them).
pub async fn subfolders(b: &Bucket, prefix: &Key) -> anyhow::Result<Vec<String>> {
    let l = b.os.list_with_delimiter(Some(prefix)).await.map_err(|e| err("list", &e))?;
    Ok(l.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect())
}

/// The newest modification time of the objects under `prefix` (None: no objects).
pub async fn newest(b: &Bucket, prefix: &Key) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let mut l = b.os.list(Some(prefix));
    let mut newest = None;
    while let Some(m) = l.next().await {
        let m = m.map_err(|e| err("list", &e))?;
        newest = newest.max(Some(m.last_modified));
    }
    Ok(newest)
}

/// Open SFTP uploads under `tenants/<t>/uploads/` whose state was last written before `cutoff`: aborted and
/// removed (a Connector that comes back later starts those files over). Returns how many.
pub async fn sweep_stale_uploads(
    b: &Bucket,
    tenant: &str,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<usize> {
    let root = tenant_root(b, tenant);
    let mut l = b.os.list(Some(&root.uploads));
    let mut stale = Vec::new();
    while let Some(m) = l.next().await {
        let m = m.map_err(|e| err("list", &e))?;
        if m.last_modified < cutoff {
            stale.push(m.location);
        }
    }
    drop(l);
    let mut n = 0;
    for state in stale {
        let Some(file) = ferry_sftp::store::rebase(&state, &root.uploads, &root.files) else { continue };
        if ferry_sftp::store::discard_upload(b, &file, &state).await.map_err(|e| err("abort", &e))? {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let mut c = StorageConfig::default();
        c.validate().unwrap();
        c.url = "s3://".into();
        assert!(c.validate().is_err());
        c.url = "gs://b".into();
        assert!(c.validate().is_err());
        c.url = "s3://bucket/some/prefix".into();
        c.validate().unwrap();
        c.part_size_mib = 4;
        assert!(c.validate().is_err());
    }

    #[tokio::test]
    async fn plain_http_only_for_loopback() {
        let mut c =
            StorageConfig { url: "s3://b".into(), endpoint: "http://10.1.2.3:9000".into(), ..Default::default() };
        let e = Files::open(&c).await.unwrap_err().to_string();
        assert!(e.contains("allow_http"), "{e}");
        c.allow_http = true;
        let e = Files::open(&c).await.unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn tenant_keys_stay_under_the_prefix() {
        let b = Bucket::new(object_store::memory::InMemory::new(), Key::from("p"), 0);
        let root = tenant_root(&b, "alpha");
        let m = root.map("/../beta/x").map(|m| m.file);
        assert!(m.is_err());
        let m = root.map("/a%2F..%2Fbeta/x").unwrap();
        assert!(m.file.as_ref().starts_with("p/tenants/alpha/sftp/"), "{}", m.file);
        assert_eq!(m.file.parts().count(), 6);
    }
}
