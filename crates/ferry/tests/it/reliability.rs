//! Reliability, one fault at a time: transfers cut at half resume and move only the other half; a stalled
//! peer makes the Connector give up within its time limit with a clear error; SIGTERM finishes the current
//! step and a second one stops at once, and the next start resumes; a full disk fails a step cleanly, says
//! which disk, and the step succeeds once space is freed. (The many-faults-at-once harness is `faults.rs`.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::procs::*;
use ferry::cluster::Cluster;
use ferry_connector::agent::Connector;
use ferry_connector::receive::Outcome;
use ferry_sample::{SampleSize, generate_sample_erp};

/// Deterministic bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x: u64 = 0x9E3779B97F4A7C15 ^ seed;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

/// Points a connector's SFTP (and, if given, web services) at other addresses, as if the network changed.
fn reroute(conn: &Connector, ssh: Option<String>, https: Option<String>) -> Connector {
    let mut reg = conn.registration().expect("registration");
    if let Some(a) = ssh {
        reg.ssh_addr = a;
    }
    if let Some(u) = https {
        reg.comms_url = u;
    }
    reg.save(conn.cfg.registration_path()).expect("save");
    Connector::load(&conn.cfg.base.join("connector.toml")).expect("reload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_cut_at_half_resume_and_move_only_the_other_half() {
    let (_dir, c) = cluster().await;
    let conn = tenant(&c, "acme").await;
    let proxy = Proxy::start(c.comms.ssh_addr).await;
    let conn = reroute(&conn, Some(format!("127.0.0.1:{}", proxy.port)), None);
    const LEN: u64 = 100 * 1024 * 1024;
    let data = noise(LEN as usize, 1);
    let local = c.dir.join("big.bin");
    std::fs::write(&local, &data).unwrap();
    let root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "acme");

    // Upload: the connection is cut once 50 MB went up.
    let sftp = conn.sftp().await.unwrap();
    sftp.mkdir_all("/upload").await.unwrap();
    proxy.cut_after(Some(LEN / 2), None);
    let err = sftp.upload_file_resuming(&local, "/upload/big.bin").await.expect_err("the cut stops the upload");
    println!("upload cut: {err}");
    let part = root.join("upload/.big.bin.part");
    // The server finishes writing what it had received, then closes the file (it runs in this process).
    let closed = eventually(Duration::from_secs(10), async || !held_open(&part)).await;
    assert!(closed.is_some(), "the server still holds {} open", part.display());
    let kept = file_size(&part);
    assert!(kept > LEN / 4 && kept <= LEN / 2, "the server kept {kept} bytes of the cut upload");
    let before = proxy.up.load(std::sync::atomic::Ordering::SeqCst);
    let sftp = conn.sftp().await.unwrap();
    let sent = sftp.upload_file_resuming(&local, "/upload/big.bin").await.unwrap();
    let on_wire = proxy.up.load(std::sync::atomic::Ordering::SeqCst) - before;
    println!("upload resumed: {sent} bytes sent ({on_wire} on the wire) after {kept} kept, of {LEN}");
    assert_eq!(sent, LEN - kept, "only what the server lacks is sent");
    assert!(on_wire < LEN * 6 / 10, "{on_wire} bytes went up to finish a half-done upload");
    assert_eq!(std::fs::read(root.join("upload/big.bin")).unwrap(), data);
    assert!(!part.exists());

    // Download: the connection is cut once 50 MB came down.
    std::fs::create_dir_all(root.join("download")).unwrap();
    std::fs::rename(root.join("upload/big.bin"), root.join("download/big.bin")).unwrap();
    let dst = c.dir.join("got.bin");
    proxy.cut_after(None, Some(LEN / 2));
    let err = sftp.download_file_resuming("/download/big.bin", &dst).await.expect_err("the cut stops the download");
    println!("download cut: {err}");
    let part = c.dir.join(".got.bin.part");
    let kept = file_size(&part);
    assert!(kept > LEN / 4 && kept <= LEN / 2, "the client kept {kept} bytes of the cut download");
    let before = proxy.down.load(std::sync::atomic::Ordering::SeqCst);
    let sftp = conn.sftp().await.unwrap();
    let got = sftp.download_file_resuming("/download/big.bin", &dst).await.unwrap();
    let on_wire = proxy.down.load(std::sync::atomic::Ordering::SeqCst) - before;
    println!("download resumed: {got} bytes received ({on_wire} on the wire) after {kept} kept, of {LEN}");
    assert_eq!(got, LEN - kept, "only the missing part is fetched");
    assert!(on_wire < LEN * 6 / 10, "{on_wire} bytes came down to finish a half-done download");
    assert!(std::fs::read(&dst).unwrap() == data, "the resumed download differs from the file");
    assert!(!part.exists());

    // A part whose tail differs from the file is not trusted: the download starts over.
    let mut wrong = data[..(LEN / 2) as usize].to_vec();
    *wrong.last_mut().unwrap() ^= 0xff;
    std::fs::write(c.dir.join(".again.bin.part"), &wrong).unwrap();
    let got = sftp.download_file_resuming("/download/big.bin", &c.dir.join("again.bin")).await.unwrap();
    assert_eq!(got, LEN);
    assert!(std::fs::read(c.dir.join("again.bin")).unwrap() == data);
    sftp.close().await.unwrap();
    c.stop().await;
}

/// `ferry <args>` in a blocking task; returns (success, stdout + stderr, seconds).
async fn ferry_run(args: Vec<String>) -> (bool, String, f64) {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let out = ferry_output(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text, t.elapsed().as_secs_f64())
    })
    .await
    .unwrap()
}

fn cfg_arg(conn: &Connector, cmd: &str) -> Vec<String> {
    vec!["connector".into(), cmd.into(), "--config".into(), conn.cfg.base.join("connector.toml").display().to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_comms_server_makes_the_connector_give_up_in_time_with_a_clear_error() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector("acme", &erp, &token).await.unwrap();
    edit_toml(&conn.cfg.base.join("connector.toml"), |t| {
        let n = section(t, "network");
        n.insert("connect_timeout_secs".into(), 2.into());
        n.insert("timeout_secs".into(), 3.into());
    });
    // A peer that accepts connections and never says a word, for HTTPS and SSH alike.
    let (hole, _task) = black_hole().await;
    let conn = reroute(&conn, Some(format!("127.0.0.1:{hole}")), Some(format!("https://127.0.0.1:{hole}")));

    let (ok, out, secs) = ferry_run(cfg_arg(&conn, "receive")).await;
    println!("receive ({secs:.1} s): {out}");
    assert!(!ok, "{out}");
    assert!(out.contains("timed out"), "the error says it timed out: {out}");
    assert!(secs < 15.0, "receive gave up after {secs:.1} s");

    let (ok, out, secs) = ferry_run(cfg_arg(&conn, "sync")).await;
    println!("sync ({secs:.1} s): {out}");
    assert!(!ok, "{out}");
    assert!(out.contains("timed out after 2 s while setting up the ssh session"), "{out}");
    assert!(out.contains("attempt 1 of 4"), "the upload is retried with backoff: {out}");
    // extract (seconds) + 4 connection attempts of 2 s with backoff between them
    assert!(secs < 90.0, "sync gave up after {secs:.1} s");

    // `status` says what is pending and why, although the server cannot be reached.
    let (ok, out, secs) = ferry_run(cfg_arg(&conn, "status")).await;
    println!("status ({secs:.1} s): {out}");
    // ... and exits non-zero: the batch list at the server is missing from what it shows.
    assert!(!ok, "{out}");
    assert!(out.contains("pending:"), "{out}");
    assert!(out.contains("extracted, not yet accepted by the Comms server"), "{out}");
    assert!(out.contains("sync: failing since") && out.contains("timed out"), "{out}");
    assert!(out.contains("cannot reach the Comms server"), "{out}");
    assert!(secs < 15.0);
    c.stop().await;
}

/// A Connector in `dir/connectors/acme` whose ERP has `recommended_orders` keyed by (order_number, line),
/// written with INSERT OR IGNORE, files going to `from_cloud/`, and a delivery command.
async fn connector_with_command(c: &Cluster, erp: &Path, command: Vec<String>) -> Connector {
    run_sql(
        erp,
        "CREATE TABLE IF NOT EXISTS recommended_orders (order_number TEXT NOT NULL, line INTEGER NOT NULL,
             qty REAL NOT NULL, PRIMARY KEY (order_number, line))",
    );
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector("acme", erp, &token).await.unwrap();
    edit_toml(&conn.cfg.base.join("connector.toml"), |t| {
        let s = section(t, "schedule");
        s.insert("daily_at".into(), "".into());
        s.insert("poll_wait_secs".into(), 2.into());
        let d = section(t, "delivery");
        d.insert("inbound_dir".into(), "from_cloud".into());
        d.insert("only".into(), toml::Value::Array(vec!["po_".into()]));
        let mut sql = toml::Table::new();
        sql.insert(
            "statement".into(),
            "INSERT OR IGNORE INTO recommended_orders(order_number, line, qty) VALUES (?, ?, ?)".into(),
        );
        sql.insert("params".into(), toml::Value::Array(vec!["order_number".into(), "line".into(), "qty".into()]));
        d.insert("sql".into(), toml::Value::Array(vec![toml::Value::Table(sql)]));
        d.insert("command".into(), toml::Value::Array(command.into_iter().map(Into::into).collect()));
    });
    Connector::load(&conn.cfg.base.join("connector.toml")).unwrap()
}

async fn publish(c: &Cluster, name: &str, text: &str) {
    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    let src = c.dir.join(format!("src-{name}"));
    std::fs::write(&src, text).unwrap();
    ferry_app::outbox::publish(&inst.0, "acme", &c.app.state.sftp_root(), &src, name).await.unwrap();
    c.app.state.announce_wakeup.notify_one();
}

fn po(order: &str) -> String {
    format!("order_number,line,item,qty\n{order},1,A1,5\n{order},2,B2,7\n")
}

/// The journal state of the file called `name`, if any.
fn journal_state(conn: &Connector, name: &str) -> Option<String> {
    query(conn.cfg.journal_path(), &format!("SELECT state FROM received WHERE name = '{name}'"))
        .first()
        .map(|r| r[0].clone())
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    assert!(eventually(limit, async || f()).await.is_some(), "timed out waiting for {what}");
}

/// Whether a file descriptor of this process is open on `path` (Linux: `/proc/self/fd`).
fn held_open(path: &Path) -> bool {
    let (Ok(path), Ok(fds)) = (std::fs::canonicalize(path), std::fs::read_dir("/proc/self/fd")) else { return false };
    fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
}

fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_the_current_step_a_second_one_stops_at_once_and_the_next_start_resumes() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // The ERP's import command: says it started, then takes 6 s (unless told to be quick).
    let script = dir.path().join("import.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch \"{m}/started-$(basename \"$1\")\"\n[ -e \"{m}/quick\" ] && exit 0\nsleep 6\n",
            m = marks.display()
        ),
    )
    .unwrap();
    let conn = connector_with_command(&c, &erp, vec!["sh".into(), script.display().to_string(), "{file}".into()]).await;
    let inbound = conn.cfg.base.join("from_cloud");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let args = cfg_arg(&conn, "run");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let rows = |order: &str| {
        query(&erp, &format!("SELECT COUNT(*) FROM recommended_orders WHERE order_number = '{order}'"))[0][0].clone()
    };

    // 1. SIGTERM while a file is being applied: the step finishes (applied, journaled, acknowledged), then
    //    the agent exits cleanly.
    let mut run = Node::new("run-1", &argv, &logs);
    run.start();
    publish(&c, "po_000001.csv", &po("R1")).await;
    wait_for("the import command to start", Duration::from_secs(30), || marks.join("started-po_000001.csv").exists())
        .await;
    let t = Instant::now();
    run.term();
    let status = tokio::task::spawn_blocking(move || (run.wait_exit(Duration::from_secs(30)), run)).await.unwrap();
    let (status, run) = status;
    let status = status.expect("run stops after SIGTERM");
    let log = run.log_text();
    println!("{log}");
    assert!(status.success(), "{status}: {log}");
    assert!(t.elapsed() > Duration::from_secs(5), "it did not wait for the step to finish");
    assert!(log.contains("stopping after the current step") && log.contains("connector stopped"), "{log}");
    assert_eq!(journal_state(&conn, "po_000001.csv").as_deref(), Some("acked"));
    assert_eq!(std::fs::read_to_string(inbound.join("po_000001.csv")).unwrap(), po("R1"));
    assert_eq!(rows("R1"), "2");

    // 2. Two signals: it stops at once, mid-step; nothing partial is visible and the journal does not claim
    //    the file was applied.
    let mut run = Node::new("run-2", &argv, &logs);
    run.start();
    publish(&c, "po_000002.csv", &po("R2")).await;
    wait_for("the import command to start", Duration::from_secs(30), || marks.join("started-po_000002.csv").exists())
        .await;
    let t = Instant::now();
    run.term();
    wait_for("the first signal to be taken", Duration::from_secs(10), || {
        run.log_text().contains("stopping after the current step")
    })
    .await;
    run.term();
    let (status, run) =
        tokio::task::spawn_blocking(move || (run.wait_exit(Duration::from_secs(10)), run)).await.unwrap();
    let status = status.expect("run stops after a second SIGTERM");
    let stopped_in = t.elapsed();
    println!("{}", run.log_text());
    assert!(!status.success());
    assert!(stopped_in < Duration::from_secs(4), "the second signal took {stopped_in:?} to stop it");
    assert!(run.log_text().contains("stopping now"));
    assert_ne!(journal_state(&conn, "po_000002.csv").as_deref(), Some("acked"));
    assert_ne!(journal_state(&conn, "po_000002.csv").as_deref(), Some("applied"));
    for name in visible(&inbound) {
        assert!(!name.starts_with('.'), "a temporary file is left in the inbound folder: {name}");
        let text = std::fs::read_to_string(inbound.join(&name)).unwrap();
        assert!(text == po("R1") || text == po("R2"), "{name} is visible incomplete: {text:?}");
    }

    // 3. The next start resumes: the file is applied once and acknowledged.
    std::fs::write(marks.join("quick"), "").unwrap();
    let mut run = Node::new("run-3", &argv, &logs);
    run.start();
    wait_for("the interrupted file to be applied", Duration::from_secs(60), || {
        journal_state(&conn, "po_000002.csv").as_deref() == Some("acked")
    })
    .await;
    assert_eq!(std::fs::read_to_string(inbound.join("po_000002.csv")).unwrap(), po("R2"));
    assert_eq!(rows("R2"), "2");
    assert_eq!(visible(&inbound), ["po_000001.csv", "po_000002.csv"]);

    // 4. SIGTERM while the daily extract runs: the sync finishes (the batch is imported), then it exits.
    run.term();
    let (status, _run) =
        tokio::task::spawn_blocking(move || (run.wait_exit(Duration::from_secs(30)), run)).await.unwrap();
    assert!(status.expect("stops").success());
    edit_toml(&conn.cfg.base.join("connector.toml"), |t| {
        section(t, "schedule").insert("daily_at".into(), "00:00".into());
    });
    let mut run = Node::new("run-4", &argv, &logs);
    run.start();
    let log_path = run.log_path().to_path_buf();
    wait_for("the daily extract to start", Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path).unwrap_or_default().contains("extracting batch")
    })
    .await;
    run.term();
    let (status, run) =
        tokio::task::spawn_blocking(move || (run.wait_exit(Duration::from_secs(180)), run)).await.unwrap();
    let log = run.log_text();
    println!("{log}");
    assert!(status.expect("stops after the sync").success(), "{log}");
    assert!(log.contains("waiting for the running sync to finish"), "{log}");
    assert!(log.contains("daily sync: batch") && log.contains("imported"), "{log}");
    let batches = query(conn.cfg.journal_path(), "SELECT state FROM batches");
    assert_eq!(batches, vec![vec!["imported".to_string()]], "the journal is consistent");
    assert!(visible(conn.cfg.spool_dir()).is_empty(), "the spool is clean: {:?}", visible(conn.cfg.spool_dir()));
    c.stop().await;
}

/// A size-limited tmpfs mounted for one test (unmounted when dropped). Outside CI (`FERRY_CI` unset) a machine
/// that cannot mount makes the test skip with a visible message; in CI it fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs(path.to_path_buf())),
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        if std::env::var("FERRY_CI").is_ok_and(|v| v == "1") {
            panic!("cannot mount a size-limited tmpfs for the disk-full tests (run CI as root): {why}");
        }
        eprintln!("SKIPPED: the disk-full test needs to mount a tmpfs (root); mount said: {why}");
        None
    }

    /// Fills the file system until only about `leave` bytes are free. Returns the filler to remove later.
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let mut written = 0u64;
        while f.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        drop(f);
        // tmpfs frees the pages of a truncated tail
        let f = std::fs::OpenOptions::new().write(true).open(&filler).unwrap();
        f.set_len(written.saturating_sub(leave)).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_step_cleanly_names_the_disk_and_the_step_succeeds_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    // The Comms server's data (`<dir>/comms` in a cluster) on a 16 MB disk.
    let Some(comms_disk) = Tmpfs::mount(&tmp.path().join("comms"), "16m") else { return };
    let c = Cluster::start(tmp.path()).await.unwrap();
    let erp = tmp.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    run_sql(&erp, "DELETE FROM sales_lines WHERE line_id % 2 = 0");
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector("acme", &erp, &token).await.unwrap();
    // The Connector's data (journal, spool, downloads) on a 4 MB disk, its inbound folder on a 1 MB one.
    let Some(conn_disk) = Tmpfs::mount(&tmp.path().join("conn-disk"), "4m") else { return };
    let Some(inbound_disk) = Tmpfs::mount(&tmp.path().join("inbound-disk"), "1m") else { return };
    let data = conn_disk.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(conn.cfg.registration_path(), data.join("registration.json")).unwrap();
    edit_toml(&conn.cfg.base.join("connector.toml"), |t| {
        t.insert("data_dir".into(), data.display().to_string().into());
        section(t, "delivery").insert("inbound_dir".into(), inbound_disk.0.display().to_string().into());
    });
    let conn = Connector::load(&conn.cfg.base.join("connector.toml")).unwrap();
    let spool = conn.cfg.spool_dir();

    // 1. The Connector's own disk is full while extracting.
    let filler = conn_disk.fill(200 * 1024);
    let (ok, out, _) = ferry_run(cfg_arg(&conn, "sync")).await;
    println!("sync on a full disk: {out}");
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("the disk holding {} is full", spool.display())), "{out}");
    let complete: Vec<_> = walk(spool).into_iter().filter(|p| p.ends_with("manifest.json")).collect();
    assert!(complete.is_empty(), "a batch looks complete in the spool: {complete:?}");
    std::fs::remove_file(&filler).unwrap();

    // 2. The Comms server's disk is full while the Connector uploads: the batch is not accepted.
    let filler = comms_disk.fill(300 * 1024);
    let (ok, out, _) = ferry_run(cfg_arg(&conn, "sync")).await;
    println!("sync to a server with a full disk: {out}");
    assert!(!ok, "{out}");
    assert!(out.contains("disk is full"), "{out}");
    assert!(ferry_comms::db::list_tenants(&c.comms.state.db).await.unwrap()[0].batches == 0);
    std::fs::remove_file(&filler).unwrap();
    let (ok, out, _) = ferry_run(cfg_arg(&conn, "sync")).await;
    println!("sync once space is freed: {out}");
    assert!(ok && out.contains(": imported ("), "{out}");
    assert!(out.contains("resuming batch"), "the extracted batch is sent, not extracted again: {out}");

    // 3. The inbound folder's disk is full when a file arrives: nothing reaches the ERP, the file stays
    //    waiting, and it is applied once space is freed.
    let text = format!("order_number,line,item,qty\n{}", "R1,1,A1,5\n".repeat(30_000));
    publish(&c, "report_big.csv", &text).await;
    let filler = inbound_disk.fill(0);
    let mut failed = None;
    let t = Instant::now();
    while failed.is_none() && t.elapsed() < Duration::from_secs(30) {
        // (the planner's orders from the import above arrive too, and fail the same way: nothing fits)
        for o in conn.receive(2, &quiet).await.unwrap() {
            match o {
                Outcome::Failed { name, error } if name == "report_big.csv" => failed = Some(error),
                Outcome::Failed { .. } => {}
                other => panic!("delivered to a full disk: {other:?}"),
            }
        }
    }
    let error = failed.expect("the delivery fails");
    println!("delivery to a full disk: {error}");
    assert!(error.contains(&format!("the disk holding {} is full", inbound_disk.0.display())), "{error}");
    assert_eq!(visible(&inbound_disk.0), ["filler"], "nothing partial is visible");
    std::fs::remove_file(&filler).unwrap();
    let out = conn.receive(0, &quiet).await.unwrap();
    assert!(out.iter().all(|o| matches!(o, Outcome::Applied { .. })), "{out:?}");
    assert!(out.iter().any(|o| matches!(o, Outcome::Applied { name, .. } if name == "report_big.csv")), "{out:?}");
    assert_eq!(std::fs::read_to_string(inbound_disk.0.join("report_big.csv")).unwrap(), text);
    c.stop().await;
    drop((inbound_disk, conn_disk, comms_disk));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
