//! A real browser for tests: Debian's headless `chromium` driven through `chromedriver` (WebDriver) with
//! `fantoccini`. Shared by every test that looks at a web page (the buyer's page, issue 10; the operator
//! console, issue 13).
//!
//! ```ignore
//! let Some(b) = browser::Browser::start(&work_dir, &[browser::spki_pin(&key_pem)]).await else { return };
//! b.client.goto(&format!("{url}/login")).await?;
//! b.client.find(Locator::Css("#email")).await?.send_keys("a@b.c").await?;
//! b.screenshot("login").await;          // <work_dir>/screenshots/login.png
//! b.close().await;
//! ```
//!
//! - `chromedriver` listens on a free 127.0.0.1 port; it and the chromium it starts run in their own process
//!   group, killed (by that group's id, nothing else) when the [`Browser`] is dropped.
//! - Chromium runs headless, `--no-sandbox` when the test runs as root, and trusts a self-signed server
//!   certificate only through the pins given (`--ignore-certificate-errors-spki-list`, see [`spki_pin`]).
//! - Screenshots go to `<work>/screenshots/`; with `FERRY_SCREENSHOTS=<dir>` a copy is kept there too (the
//!   work folder is removed with the test).
//! - Without `chromium` or `chromedriver` installed, [`Browser::start`] returns `None` and prints why (the
//!   test then skips); under `FERRY_CI=1` it panics instead: CI must run these tests (`.ci/run` installs both).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use sha2::Digest;

const CHROMIUM: &[&str] = &["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];
const CHROMEDRIVER: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

/// The `--ignore-certificate-errors-spki-list` pin of a server's TLS key (PEM): base64 of the SHA-256 of its
/// SubjectPublicKeyInfo.
pub fn spki_pin(key_pem: &str) -> String {
    let key = rcgen::KeyPair::from_pem(key_pem).expect("the server's TLS key parses");
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&spki))
}

fn find(candidates: &[&str], name: &str) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists()).or_else(|| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.exists()))
    })
}

/// A headless Chromium session. `client` is the WebDriver client; pages are opened with `client.goto`.
pub struct Browser {
    pub client: fantoccini::Client,
    shots: PathBuf,
    _driver: Driver,
}

/// The chromedriver process (leader of its own process group).
struct Driver(Child);

impl Browser {
    /// Start chromedriver and a Chromium session that trusts the given SPKI pins. `None` (and a message) when
    /// the browser is not installed and `FERRY_CI` is not set.
    pub async fn start(work: &Path, spki_pins: &[String]) -> Option<Browser> {
        let ci = std::env::var("FERRY_CI").is_ok_and(|v| v == "1");
        let (Some(chromium), Some(driver)) = (find(CHROMIUM, "chromium"), find(CHROMEDRIVER, "chromedriver")) else {
            assert!(!ci, "FERRY_CI=1 but chromium/chromedriver are missing (apt-get install chromium chromium-driver)");
            eprintln!(
                "SKIPPED: chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let log = std::fs::File::create(work.join("chromedriver.log")).expect("chromedriver log");
        let mut cmd = Command::new(&driver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = Driver(cmd.spawn().expect("chromedriver starts"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "chromedriver did not listen within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = work.join("chromium-profile");
        let mut args = vec![
            "--headless".to_string(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            args.push("--no-sandbox".into());
        }
        if !spki_pins.is_empty() {
            args.push(format!("--ignore-certificate-errors-spki-list={}", spki_pins.join(",")));
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium.display().to_string(), "args": args }),
        );
        caps.insert("acceptInsecureCerts".into(), serde_json::json!(false));
        let client = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a chromium session through chromedriver");
        let shots = work.join("screenshots");
        std::fs::create_dir_all(&shots).expect("screenshots folder");
        Some(Browser { client, shots, _driver: driver })
    }

    /// Save a PNG of the current page as `<work>/screenshots/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("write screenshot");
        // the work folder goes with the test: FERRY_SCREENSHOTS=<dir> keeps a copy (e.g. for docs/)
        if let Some(keep) = std::env::var_os("FERRY_SCREENSHOTS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(keep.join(format!("{name}.png")), &png);
        }
        path
    }

    /// Wait (up to 20 s) until the page's path ends with `path`: a click that submits a form returns before
    /// the next page has loaded when the server takes a moment.
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.client.current_url().await.expect("current url");
            if now.path().ends_with(path)
                && self
                    .client
                    .execute("return document.readyState", vec![])
                    .await
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .as_deref()
                    == Some("complete")
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the browser is at {now}, not at {path}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Set the window size (e.g. a tablet's 800x1100) for the next page and screenshot.
    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.expect("resize");
    }

    /// End the session (chromium exits), then stop chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and the chromium it started are one process group of our own: end them all.
        let pgid = self.0.id() as i32;
        // SAFETY: kill(2) with the negative id of the process group this test created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}
