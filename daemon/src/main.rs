//! The `eddy` binary: tunes (or, on musl, chooses) the allocator, parses the command line,
//! sets up logging and hands over to [`eddy::cli::main`], which runs the subcommand and maps
//! its outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

/// Tunes glibc's malloc for a long-running daemon with bursty, large transient buffers.
///
/// - One arena: glibc gives threads their own arenas (up to 8 per core) and memory freed in
///   one arena is not reused by another. eddy's tasks hop between tokio's workers and sled
///   has threads of its own, so each arena kept its own high-water mark.
/// - A fixed mmap threshold of 128 KiB: glibc raises the threshold each time a large block is
///   freed, after which commit-sized buffers (compressed pages, sled's IO buffers) come from
///   the heap and fragment it; fixed, they are mapped and returned to the kernel on free.
///
/// At 10,000 readings/s from 1000 sensors RSS settled at ~25 MiB with glibc's defaults and
/// ~20 MiB with these, at the same throughput (BENCHMARKS.md). `MALLOC_ARENA_MAX` and
/// `MALLOC_MMAP_THRESHOLD_` in the environment override them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    let settings = [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 1),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 * 1024),
    ];
    for (env, param, value) in settings {
        if std::env::var_os(env).is_none() {
            // SAFETY: mallopt takes two integers and changes only malloc's own parameters; it
            // is called first thing in main, before any other thread exists.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// The static builds: musl's `calloc` writes every page of a large zeroed block, which made
/// sled's 21 MiB of untouched histograms resident ([`eddy::alloc`]).
#[cfg(all(target_os = "linux", target_env = "musl"))]
#[global_allocator]
static ALLOCATOR: eddy::alloc::LargeBlocksMapped = eddy::alloc::LargeBlocksMapped;

fn main() -> ExitCode {
    // Before anything can panic: a panic prints one report line and aborts, in every build.
    eddy::install_panic_hook();
    tune_malloc();
    let cli = eddy::cli::Cli::parse();
    let log = eddy::cli::init_logging();
    eddy::cli::main(cli, log)
}
