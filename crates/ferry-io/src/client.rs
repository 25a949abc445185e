//! A JSON client for Ferry's web services: HTTPS pinned to the server's certificate (or CA-verified), every
//! request signed with the caller's SSH key (RFC 9421), and error answers turned into readable errors that
//! carry the server's own message.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api::ErrorBody;
use reqwest::Method;
use russh::keys::PrivateKey;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: server answered {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error("cannot reach {url}: {source:#}")]
    Transport { url: String, source: anyhow::Error },
    #[error("{url}: unexpected answer: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: Option<Arc<PrivateKey>>,
}

impl ApiClient {
    /// `tls_pin`: `sha256:<hex>` of the server certificate, or None to verify against public CAs.
    pub fn new(
        base: &str,
        tls_pin: Option<&str>,
        key: Option<Arc<PrivateKey>>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::via(base, tls_pin, key, timeout, None)
    }

    /// Through an explicit HTTP CONNECT proxy (`http://[user:pass@]host:port`).
    pub fn via(
        base: &str,
        tls_pin: Option<&str>,
        key: Option<Arc<PrivateKey>>,
        timeout: Duration,
        proxy: Option<&str>,
    ) -> anyhow::Result<Self> {
        let http = crate::tls::http_client_via(tls_pin, timeout, proxy)?;
        Ok(ApiClient { http, base: base.trim_end_matches('/').to_string(), key })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, Vec::new()).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Decode { url: self.url(path), message: e.to_string() })?;
        self.call(Method::POST, path, body).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Vec<u8>) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut rb = self.http.request(method.clone(), &url).header("content-type", "application/json");
        rb = match &self.key {
            Some(key) => crate::httpsig::apply(rb, key, method.as_str(), path, body).map_err(|e| {
                ClientError::Transport { url: url.clone(), source: anyhow::anyhow!("cannot sign the request: {e}") }
            })?,
            None => rb.body(body),
        };
        let resp = rb.send().await.map_err(|e| ClientError::Transport { url: url.clone(), source: e.into() })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport { url: url.clone(), source: e.into() })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            return Err(ClientError::Status { url, status: status.as_u16(), message });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url, message: e.to_string() })
    }
}
