//! `usage-pipeline`: turns flags, a config file and the environment into
//! validated settings, runs one command, and maps errors to an exit code.

mod cli;
mod commands;
mod config;
mod summary;

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys
/// 0.1.49, `c_src/mimalloc/v3/include/mimalloc.h`); its Rust bindings list
/// only the older options.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory freed stays with the process before mimalloc returns it
/// to the OS. mimalloc's default, 1 s, is about a batch's life: each batch's
/// rows, buffers and messages were given back and faulted in again (zeroed
/// by the kernel, 2 MiB at a time with transparent huge pages), ~20% of the
/// pipeline's CPU in a profile. Ten seconds keeps a steady stream's memory;
/// an idle process still shrinks.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn main() -> ExitCode {
    // mimalloc's own `MIMALLOC_PURGE_DELAY`, when set, wins: overridden
    // here, it did nothing (an operator's setting, or an experiment).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
    }
    let cli = cli::Cli::parse();
    init_logs();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr: `USAGE_LOG` filters them (`info,rdkafka=warn` by
/// default); `USAGE_LOG_FORMAT=json` writes one JSON object per line for
/// log collectors; colours only when stderr is a terminal.
fn init_logs() {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("USAGE_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("USAGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
