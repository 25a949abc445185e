//! `ferry`: one binary for the three programs (connector, comms, app), the demo and the benchmarks. This file
//! only parses the command line and prints; the work lives in the library crates.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Two malloc arenas and a fixed mmap threshold: resident memory stays flat in the size of an extract (see
    // ferry_io::memory); first, before any thread exists.
    ferry_io::memory::tune_allocator();
    // Data at rest is the owner's only (files 0600, folders 0700), whatever umask the process was started with;
    // first, before any thread exists.
    #[cfg(unix)]
    ferry_io::private::restrict_umask();
    let args = cli::Cli::parse();
    let default_level = match &args.command {
        #[cfg(unix)]
        cli::Command::Comms(_) | cli::Command::App(_) => "info",
        _ => "warn,sqlx=error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.log.as_deref().unwrap_or(default_level)));
    // Colours only on a terminal; JSON lines for a log file or journal unless asked otherwise. The spans of the
    // servers carry `tenant` and `batch` where known: in JSON under "span"/"spans", in text before the message.
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let json = match args.log_format.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !terminal,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(terminal);
    if json {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
    // the servers hold a file descriptor per connection: many systems start processes with a soft limit of 1,024
    #[cfg(unix)]
    if matches!(&args.command, cli::Command::Comms(_) | cli::Command::App(_) | cli::Command::Demo(_)) {
        match ferry_io::accept::raise_open_file_limit() {
            Ok(n) => tracing::debug!("open-file limit: {n}"),
            Err(e) => tracing::warn!("cannot raise the open-file limit: {e}; connections are capped below it"),
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
