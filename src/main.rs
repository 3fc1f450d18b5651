//! The `switchboard` binary: parse the command line and run the chosen service.

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: argon2 allocates 19 MiB per hash, and glibc kept
/// those blocks in its per-thread arenas (measured: ~290 MB RSS after a handful of
/// concurrent logins, never given back). mimalloc returns them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchboard::cli::main()
}
