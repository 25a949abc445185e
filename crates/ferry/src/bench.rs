//! `ferry bench upstream`: generate a dataset, push it through the real pipeline, and print per stage seconds
//! and MB/s and the peak RSS — beside the standard tools (`bzip2`, `md5sum`, OpenSSH `sftp`, `sqlite3 .import`)
//! run on the same data in the same run where they are installed. A tool, not a test.

use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// The upstream path: extract, compress, upload, relay, verify+import.
    Upstream {
        #[arg(long, default_value = "small")]
        size: String,
        /// Working folder (default: temporary).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Upstream { size, dir } => upstream(&size, dir).await,
    }
}

async fn upstream(_size: &str, _dir: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bench upstream: being written")
}
