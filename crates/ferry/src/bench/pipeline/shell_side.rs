//! The shell pipeline Ferry is measured against, with the standard tools and two real OpenSSH servers on
//! loopback (a relay and an app host, each `sshd -D -f cfg -e` with its own host key, config, authorized keys
//! and port): export every mapping query with `sqlite3 -csv` (or `psql --csv`), `md5sum` the CSV files,
//! compress them (`bzip2 -9`, or `lbzip2 -n N -9`), `sftp` them to the relay, `sftp` them on from the relay's
//! folder to the app host, decompress (`bunzip2` / `lbzip2 -d`), `md5sum -c`, and load them with
//! `sqlite3 .import`, all files in one transaction. One `sh` script per compressor; it prints a marker before
//! each stage, timed as it arrives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_proto::spec;

use super::procs::{Server, Usage, find_program, free_ports, output, proc_cpu, run_timed, sh_quote, tail};
use super::{Erp, ErpKind, Measured};

/// How the shell pipeline compresses.
#[derive(Debug, Clone, Copy)]
pub(super) enum Codec {
    Bzip2,
    /// `lbzip2 -n N` both ways.
    Lbzip2(usize),
}

impl Codec {
    pub(super) fn label(self) -> String {
        match self {
            Codec::Bzip2 => "shell bzip2 -9".into(),
            Codec::Lbzip2(n) => format!("shell lbzip2 -n{n}"),
        }
    }

    fn compress(self) -> String {
        match self {
            Codec::Bzip2 => "bzip2 -9 --".into(),
            Codec::Lbzip2(n) => format!("lbzip2 -n {n} -9 --"),
        }
    }

    fn decompress(self) -> String {
        match self {
            Codec::Bzip2 => "bunzip2 --".into(),
            Codec::Lbzip2(n) => format!("lbzip2 -d -n {n} --"),
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            Codec::Bzip2 => "bzip2",
            Codec::Lbzip2(_) => "lbzip2",
        }
    }
}

/// One query of the mapping, exported to `name` and loaded into `table`.
pub(super) struct Export {
    pub(super) name: String,
    pub(super) query: String,
}

impl Export {
    /// The instance table and its column count (None: a custom file, exported with its header row).
    fn table(&self) -> (String, Option<usize>) {
        match spec::file_spec(&self.name) {
            Some(s) => (s.table.to_string(), Some(s.columns.len())),
            None => (self.name.trim_end_matches(".csv").to_string(), None),
        }
    }
}

/// Tools the shell pipelines need, with the Debian package of each: `None` when all are there.
pub(super) fn missing(erp: &Erp) -> Option<String> {
    let mut need = vec![
        ("sshd", "openssh-server"),
        ("sftp", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("sqlite3", "sqlite3"),
        ("md5sum", "coreutils"),
        ("sh", "dash"),
    ];
    if matches!(erp.kind, ErpKind::Postgres(_)) {
        need.push(("psql", "postgresql-client"));
    }
    let missing: Vec<_> = need.into_iter().filter(|(p, _)| find_program(p).is_none()).collect();
    if missing.is_empty() {
        return None;
    }
    let progs: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    let mut pkgs: Vec<&str> = missing.iter().map(|(_, k)| *k).collect();
    pkgs.dedup();
    Some(format!("{} not found (apt-get install {})", progs.join(", "), pkgs.join(" ")))
}

/// An OpenSSH server on 127.0.0.1, started unprivileged-style: its own host key, config, authorized keys and
/// port; the log on stderr (`-e`) goes to a file.
struct Sshd {
    server: Server,
    port: u16,
    known_hosts: PathBuf,
}

impl Sshd {
    fn start(name: &str, dir: &Path, client_pub: &Path, port: u16) -> anyhow::Result<Sshd> {
        std::fs::create_dir_all(dir)?;
        let host_key = dir.join("host_key");
        keygen(&host_key)?;
        let auth = dir.join("authorized_keys");
        std::fs::copy(client_pub, &auth)?;
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nUsePAM no\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n",
                host_key.display(),
                auth.display()
            ),
        )?;
        // sshd re-executes itself: it must be started by its absolute path
        let sshd = find_program("sshd").context("sshd not found (apt-get install openssh-server)")?;
        let mut cmd = Command::new(sshd);
        cmd.arg("-D").arg("-f").arg(&cfg).arg("-e");
        let mut server = Server::start(name, &mut cmd, dir.join("sshd.log"))?;
        server.wait_for_line("Server listening on", 0, Duration::from_secs(30))?;
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub"))?;
        let fields: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {}\n", fields.join(" ")))?;
        Ok(Sshd { server, port, known_hosts })
    }
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    output(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "ferry-bench", "-f"]).arg(path))?;
    Ok(())
}

/// sshd refuses to start as root without its privilege separation folder, which Debian's service creates at
/// boot and a container may lack.
fn privsep_dir() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(dir)
            .context("sshd needs /run/sshd when started as root, and it cannot be created")?;
        println!("created /run/sshd (sshd's privilege separation folder, missing here)");
    }
    Ok(())
}

pub(super) struct ShellSide {
    dir: PathBuf,
    relay: Sshd,
    app: Sshd,
    exports: Vec<Export>,
}

impl ShellSide {
    /// Keys, two sshd instances and the scripts' fixed parts under `dir`.
    pub(super) fn start(dir: &Path, exports: Vec<Export>) -> anyhow::Result<ShellSide> {
        privsep_dir()?;
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys)?;
        // the connector host's key (authorised at the relay) and the relay's (authorised at the app host)
        keygen(&keys.join("erp_host"))?;
        keygen(&keys.join("relay_host"))?;
        let ports = free_ports(2)?;
        let relay = Sshd::start("relay sshd", &dir.join("relay-sshd"), &keys.join("erp_host.pub"), ports[0])?;
        let app = Sshd::start("app sshd", &dir.join("app-sshd"), &keys.join("relay_host.pub"), ports[1])?;
        let side = ShellSide { dir: dir.to_path_buf(), relay, app, exports };
        side.write_fixed_parts()?;
        Ok(side)
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
    fn relay_in(&self) -> PathBuf {
        self.dir.join("relay-in")
    }
    fn app_in(&self) -> PathBuf {
        self.dir.join("app-in")
    }
    fn app_db(&self) -> PathBuf {
        self.dir.join("app.db")
    }

    /// The queries, the sftp batch files and the import script.
    fn write_fixed_parts(&self) -> anyhow::Result<()> {
        let sql = self.dir.join("sql");
        std::fs::create_dir_all(&sql)?;
        for e in &self.exports {
            let q = e.query.trim().trim_end_matches(';');
            std::fs::write(sql.join(format!("{}.sql", e.name)), format!("{q};\n"))?;
        }
        let dq = |p: &Path| format!("\"{}\"", p.display());
        std::fs::write(
            self.dir.join("hop1.batch"),
            format!("lcd {}\ncd {}\nput *\n", dq(&self.out()), dq(&self.relay_in())),
        )?;
        std::fs::write(
            self.dir.join("hop2.batch"),
            format!("lcd {}\ncd {}\nput *\n", dq(&self.relay_in()), dq(&self.app_in())),
        )?;
        let mut import = String::from(".bail on\nBEGIN;\n");
        for e in &self.exports {
            if let (table, Some(n)) = e.table() {
                let cols: Vec<String> = (1..=n).map(|i| format!("c{i} TEXT")).collect();
                import.push_str(&format!("CREATE TABLE \"{table}\"({});\n", cols.join(", ")));
            }
        }
        import.push_str(".mode csv\n");
        for e in &self.exports {
            // a custom file's table is created from its header row
            import.push_str(&format!(".import {} \"{}\"\n", dq(&self.app_in().join(&e.name)), e.table().0));
        }
        import.push_str("COMMIT;\n");
        std::fs::write(self.dir.join("import.sql"), import)?;
        Ok(())
    }

    fn script(&self, erp: &Erp, codec: Codec) -> anyhow::Result<PathBuf> {
        let q = |p: &Path| sh_quote(p);
        let user = output(Command::new("id").arg("-un"))?.trim().to_string();
        let sftp = |hop: &str, key: &str, sshd: &Sshd| {
            format!(
                "sftp -b {} -i {} -P {} -c aes256-gcm@openssh.com -o BatchMode=yes -o IdentitiesOnly=yes \
                 -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o LogLevel=ERROR {user}@127.0.0.1 >/dev/null\n",
                q(&self.dir.join(hop)),
                q(&self.dir.join("keys").join(key)),
                sshd.port,
                q(&sshd.known_hosts)
            )
        };
        let mut s = String::from("set -eu\necho @export\n");
        for e in &self.exports {
            let header = if e.table().1.is_some() { "" } else { " header" };
            let sql = q(&self.dir.join("sql").join(format!("{}.sql", e.name)));
            let to = q(&self.out().join(&e.name));
            match &erp.kind {
                ErpKind::Sqlite(db) => {
                    let h = if header.is_empty() { "-noheader" } else { "-header" };
                    s.push_str(&format!("sqlite3 -bail -batch -readonly -csv {h} {} < {sql} > {to}\n", q(db)));
                }
                ErpKind::Postgres(_) => {
                    let t = if header.is_empty() { " -t" } else { "" };
                    s.push_str(&format!(
                        "psql -X -q -v ON_ERROR_STOP=1 --csv{t} -d \"$FERRY_BENCH_ERP_URL\" -f {sql} > {to}\n"
                    ));
                }
            }
        }
        s.push_str(&format!("echo @md5sum\ncd {}\nmd5sum -- *.csv > MD5SUMS\n", q(&self.out())));
        s.push_str(&format!("echo @compress\n{} *.csv\n", codec.compress()));
        s.push_str("echo @sftp-relay\n");
        s.push_str(&sftp("hop1.batch", "erp_host", &self.relay));
        s.push_str("echo @sftp-app\n");
        s.push_str(&sftp("hop2.batch", "relay_host", &self.app));
        s.push_str(&format!("echo @decompress\ncd {}\n{} *.csv.bz2\n", q(&self.app_in()), codec.decompress()));
        s.push_str("echo @md5sum-c\nmd5sum -c --quiet MD5SUMS\n");
        s.push_str(&format!(
            "echo @import\nsqlite3 -bail {} < {}\necho @done\n",
            q(&self.app_db()),
            q(&self.dir.join("import.sql"))
        ));
        let path = self.dir.join(format!("pipeline-{}.sh", codec.file_stem()));
        std::fs::write(&path, s)?;
        Ok(path)
    }

    /// One run of the pipeline with `codec`, from empty folders and no app database.
    pub(super) fn round(&self, erp: &Erp, codec: Codec) -> anyhow::Result<ShellRound> {
        for d in [self.out(), self.relay_in(), self.app_in()] {
            if d.exists() {
                std::fs::remove_dir_all(&d)?;
            }
            std::fs::create_dir_all(&d)?;
        }
        let _ = std::fs::remove_file(self.app_db());
        let script = self.script(erp, codec)?;
        let (relay_pid, app_pid) = (self.relay.server.pid(), self.app.server.pid());
        let (r0, a0) = (proc_cpu(relay_pid, true), proc_cpu(app_pid, true));
        let mut cmd = Command::new("sh");
        cmd.arg(&script);
        if let ErpKind::Postgres(url) = &erp.kind {
            cmd.env("FERRY_BENCH_ERP_URL", url);
        }
        let run = run_timed(&mut cmd)?;
        let (r1, a1) = (proc_cpu(relay_pid, true), proc_cpu(app_pid, true));
        if !run.status.success() {
            bail!("{} ({}):\n{}\n{}", codec.label(), run.status, tail(&run.stdout()), tail(&run.stderr));
        }
        // Rows loaded per file, and the CSV bytes carried.
        let mut files = BTreeMap::new();
        for e in &self.exports {
            let sql = format!("SELECT count(*) FROM \"{}\";", e.table().0);
            let n = output(Command::new("sqlite3").arg("-readonly").arg(self.app_db()).arg(sql))?;
            let rows = n.trim().parse::<u64>().with_context(|| format!("row count of {}: {n:?}", e.name))?;
            let bytes = std::fs::metadata(self.app_in().join(&e.name)).map(|m| m.len()).unwrap_or(0);
            files.insert(e.name.clone(), (rows, bytes));
        }
        let markers: Vec<(f64, &str)> =
            run.lines.iter().filter_map(|(t, l)| l.strip_prefix('@').map(|m| (*t, m))).collect();
        let stages = markers
            .first()
            .map(|(t, _)| ("start (sh)", Some(*t)))
            .into_iter()
            .chain(markers.windows(2).map(|w| (stage_name(w[0].1), Some(w[1].0 - w[0].0))))
            .collect();
        let cpu = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or(0.0, |(a, b)| b - a);
        let procs = vec![
            ("sh script: sqlite3, md5sum, compressor, sftp clients".to_string(), run.usage),
            (format!("{} (sessions' CPU)", self.relay.server.name), Usage { cpu: cpu(r0, r1), rss_kib: None }),
            (format!("{} (sessions' CPU)", self.app.server.name), Usage { cpu: cpu(a0, a1), rss_kib: None }),
        ];
        let bytes = files.values().map(|(_, b)| b).sum();
        let rows = files.values().map(|(r, _)| r).sum();
        Ok(ShellRound { measured: Measured { wall: run.wall, stages, procs, bytes, rows }, files })
    }

    pub(super) fn stop(mut self) {
        self.relay.server.stop();
        self.app.server.stop();
    }
}

fn stage_name(marker: &str) -> &'static str {
    match marker {
        "export" => "export (sqlite3 -csv / psql --csv)",
        "md5sum" => "md5sum",
        "compress" => "compress",
        "sftp-relay" => "sftp -> relay sshd",
        "sftp-app" => "sftp relay -> app sshd",
        "decompress" => "decompress",
        "md5sum-c" => "md5sum -c",
        "import" => "sqlite3 .import (one transaction)",
        _ => "other",
    }
}

/// A shell round: the figures, and rows loaded and CSV bytes per file.
pub(super) struct ShellRound {
    pub(super) measured: Measured,
    pub(super) files: BTreeMap<String, (u64, u64)>,
}
