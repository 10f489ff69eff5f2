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
/// `mi_option_allow_thp` in the same enum.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// How long memory freed stays with the process before mimalloc returns it
/// to the OS. mimalloc's default, 1 s, is about a batch's life: each batch's
/// rows, buffers and messages were given back and faulted in again (zeroed
/// by the kernel, 2 MiB at a time with transparent huge pages), ~20% of the
/// pipeline's CPU in a profile. Ten seconds keeps a steady stream's memory;
/// an idle process still shrinks.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn main() -> ExitCode {
    tune_allocators();
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

/// The allocators' settings, each unless its own environment variable is
/// set: an operator's setting (or an experiment's) wins; overridden here,
/// it would do nothing.
fn tune_allocators() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        without_transparent_huge_pages();
    }
    if std::env::var_os("GLIBC_TUNABLES").is_none() && !glibc_keeps_its_memory() {
        eprintln!("warning: glibc refused the allocator thresholds; librdkafka's buffers are faulted in again");
    }
}

/// Small pages only. mimalloc asks for transparent huge pages on its
/// arenas, and the pipeline's memory comes and goes in batches: each fault
/// in a huge-page range had the kernel zero 2 MiB, most of it never used
/// (17-24% of the pricing stage's CPU in profiles; on 4 KiB pages 8% and
/// 21% less CPU per event in two pairs of end-to-end runs). The option stops mimalloc asking; the prctl
/// covers memory it asked for before `main` and systems where THP is
/// always on.
fn without_transparent_huge_pages() {
    // SAFETY: sets a plain integer option; mimalloc reads it at each OS allocation.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only; on failure
    // (an old kernel) huge pages stay allowed, which costs only speed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// glibc's allocator serves librdkafka (C): its fetch buffers (5 MB and
/// more at full speed), its messages and the copies of those it is given
/// to send (dead letters, forwards; the ledger feed is sent uncopied). By
/// default glibc maps an allocation that large on its own and unmaps it
/// when freed, or trims the freed top of its heap: the next one is
/// faulted in and zeroed again by the kernel (~2 µs a page here). Kept
/// instead, up to what librdkafka's bounded queues hold at once: a 2
/// M-event run took 160,000 page faults instead of 322,000 (~0.3 s of
/// CPU), 15 MB more resident, with a 4 MiB mapping threshold; at 32 MiB
/// (glibc's largest) fetch buffers are kept too, half the faults again.
/// Returns whether glibc took both settings (a threshold past its limits
/// is refused; elsewhere than glibc, nothing to do).
fn glibc_keeps_its_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes integer arguments and only sets thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}

/// Allocations from this size on get a mapping of their own (glibc's
/// default starts at 128 KiB and moves with what is freed; 32 MiB is the
/// most it takes on 64-bit systems).
const GLIBC_MMAP_THRESHOLD: std::ffi::c_int = 32 << 20;
/// Free memory at the top of a heap kept before glibc gives it back.
const GLIBC_TRIM_THRESHOLD: std::ffi::c_int = 256 << 20;

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

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn transparent_huge_pages_are_off_for_the_process() {
        let enabled = || {
            let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
            status.lines().find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_owned()))
        };
        super::without_transparent_huge_pages();
        // Kernels before 5.0 do not report it; the prctl still applies.
        if let Some(value) = enabled() {
            assert_eq!(value, "0");
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_serves_a_fetch_sized_buffer_from_its_heap_not_a_mapping_of_its_own() {
        assert!(super::glibc_keeps_its_memory());
        // Rust's allocations go to mimalloc here: glibc's count of mapped
        // chunks moves only with this test's own.
        // SAFETY: a plain malloc/free pair; mallinfo2 only reads counters.
        unsafe {
            let before = libc::mallinfo2().hblks;
            let buffer = libc::malloc(8 << 20);
            assert!(!buffer.is_null());
            let during = libc::mallinfo2().hblks;
            libc::free(buffer);
            assert_eq!(during, before, "an 8 MiB allocation got a mapping of its own");
        }
    }
}
