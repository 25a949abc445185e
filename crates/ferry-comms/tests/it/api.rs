//! The Connector-facing router ([`ferry_comms::api::router`]) driven with `tower::ServiceExt::oneshot`: no
//! socket, no TLS, a Comms server's state over a temporary SQLite database. Registration by token, then what a
//! signature decides: an unsigned, wrongly signed, unknown-key or replayed request is refused (401, JSON error
//! body), a good one is answered for the key's tenant; an unknown route is 404. Written against the public
//! router builder only, so it holds whatever extractor the routes use.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use ferry_comms::{CommsConfig, CommsHandle};
use ferry_io::httpsig;
use ferry_io::keys::{self, KeyAlgorithm};
use ferry_proto::api::{RegisterResponse, WhoAmI};
use ferry_proto::token::RegistrationToken;
use russh::keys::PrivateKey;
use serde_json::Value;
use tower::ServiceExt;

/// A Comms server (state, database, keys) in a temporary folder, with no admin listener and no App.
async fn comms() -> (tempfile::TempDir, CommsHandle) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = CommsConfig { data_dir: dir.path().join("comms"), listen_admin: None, ..CommsConfig::default() };
    let https = std::net::TcpListener::bind("127.0.0.1:0").expect("bind https");
    let ssh = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind ssh");
    let handle = ferry_comms::start(cfg, https, ssh).await.expect("start comms");
    (dir, handle)
}

/// `method path` with `body` (JSON when not empty) and `headers`, from a fixed peer address.
fn request(method: &str, path: &str, body: &[u8], headers: &[(&str, String)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    for (name, value) in headers {
        b = b.header(*name, value);
    }
    let mut req = b.body(Body::from(body.to_vec())).expect("request");
    req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    req
}

/// The three signature headers of `method path` with `body`, signed by `key` now.
fn signature(key: &PrivateKey, method: &str, path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let h = httpsig::sign(key, method, path, body, httpsig::unix_now()).expect("sign");
    vec![("content-digest", h.content_digest), ("signature-input", h.signature_input), ("signature", h.signature)]
}

/// Sends `req` through the router; returns the status and the body.
async fn call(router: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    (status, body.to_vec())
}

/// A refusal: `want` with a JSON body `{"error": "..."}` whose message contains `says`.
async fn refused(router: &Router, req: Request<Body>, want: StatusCode, says: &str) {
    let (status, body) = call(router, req).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, want, "{text}");
    let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let error = json["error"].as_str().unwrap_or_else(|| panic!("no \"error\" string: {text}"));
    assert!(error.to_lowercase().contains(says), "{status}: {error:?} does not say {says:?}");
}

#[tokio::test]
async fn signed_routes_answer_only_a_valid_signature_of_a_registered_key() {
    let (_dir, handle) = comms().await;
    let router = ferry_comms::api::router(handle.state.clone());
    let admin = ferry_comms::admin::Admin::open(handle.state.cfg.clone()).await.expect("admin");
    // the tenant straight into the database: there is no App server to create its instance on
    assert!(ferry_comms::db::add_tenant(&handle.state.db, "acme").await.expect("tenant"));
    let token = admin.token("acme", "https://127.0.0.1:1").await.expect("token");
    let secret = RegistrationToken::decode(&token).expect("token").secret;
    let key = keys::generate(KeyAlgorithm::Ed25519).expect("key");
    let public = keys::public_key_openssh(key.public_key()).expect("openssh");

    // health and registration need no signature
    assert_eq!(call(&router, request("GET", "/healthz", b"", &[])).await, (StatusCode::OK, b"ok".to_vec()));
    let bad_token = serde_json::json!({ "token_secret": "not-the-secret", "public_key": public, "hostname": "erp" });
    let body = serde_json::to_vec(&bad_token).unwrap();
    let (status, _) = call(&router, request("POST", "/v1/register", &body, &[])).await;
    assert!(status.is_client_error(), "a wrong token registers nothing: {status}");
    let register = serde_json::json!({ "token_secret": secret, "public_key": public, "hostname": "erp" });
    let (status, body) =
        call(&router, request("POST", "/v1/register", &serde_json::to_vec(&register).unwrap(), &[])).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let reg: RegisterResponse = serde_json::from_slice(&body).expect("register response");
    assert_eq!((reg.tenant.as_str(), reg.key_fingerprint.clone()), ("acme", keys::fingerprint(key.public_key())));

    // unsigned
    refused(&router, request("GET", "/v1/whoami", b"", &[]), StatusCode::UNAUTHORIZED, "signature").await;
    // signed for another path (the signature does not match the request)
    let other = signature(&key, "GET", "/v1/batches", b"");
    refused(&router, request("GET", "/v1/whoami", b"", &other), StatusCode::UNAUTHORIZED, "").await;
    // signed for another body
    let sig = signature(&key, "POST", "/v1/keys/rotate", b"{}");
    let req = request("POST", "/v1/keys/rotate", b"{\"public_key\":\"x\"}", &sig);
    refused(&router, req, StatusCode::UNAUTHORIZED, "").await;
    // a garbled signature
    let mut garbled = signature(&key, "GET", "/v1/whoami", b"");
    garbled[2].1 = "sig1=:AAAA:".into();
    refused(&router, request("GET", "/v1/whoami", b"", &garbled), StatusCode::UNAUTHORIZED, "").await;
    // a well-formed signature by a key nobody registered
    let stranger = keys::generate(KeyAlgorithm::Ed25519).expect("key");
    let req = request("GET", "/v1/whoami", b"", &signature(&stranger, "GET", "/v1/whoami", b""));
    refused(&router, req, StatusCode::UNAUTHORIZED, "unknown signing key").await;

    // good: the tenant comes from the key
    let good = signature(&key, "GET", "/v1/whoami", b"");
    let (status, body) = call(&router, request("GET", "/v1/whoami", b"", &good)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let who: WhoAmI = serde_json::from_slice(&body).expect("whoami");
    assert_eq!((who.tenant.as_str(), who.key_fingerprint), ("acme", keys::fingerprint(key.public_key())));
    // the same signed request again is a replay
    refused(&router, request("GET", "/v1/whoami", b"", &good), StatusCode::UNAUTHORIZED, "").await;
    // a signed call with a bad argument: a JSON error too
    let sig = signature(&key, "GET", "/v1/batches/not-a-batch", b"");
    let (status, body) = call(&router, request("GET", "/v1/batches/not-a-batch", b"", &sig)).await;
    assert!(status.is_client_error(), "{status}");
    let json: Value = serde_json::from_slice(&body).expect("a JSON error body");
    assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");

    // an unknown route, signed or not
    let (status, _) = call(&router, request("GET", "/v1/nothing-here", b"", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let sig = signature(&key, "GET", "/v1/nothing-here", b"");
    let (status, _) = call(&router, request("GET", "/v1/nothing-here", b"", &sig)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // a known route with the wrong method
    let (status, _) = call(&router, request("DELETE", "/v1/whoami", b"", &[])).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    handle.stop().await;
}
