//! The `celeriac` command: argument parsing lives in `cli`, everything else in the library.

use clap::Parser;

/// mimalloc rather than glibc's allocator: messages are built on lapin's and the async
/// thread and freed on others, which glibc pays for with arena locks and consolidation
/// (malloc and free were ~20% of the worker's samples). Drains of 20,000 `math.add`,
/// medians of alternating runs (2026-12-05): Redis 15.4k → 19.0k tasks/s and 59 → 45 µs
/// of worker CPU per task (5 pairs); RabbitMQ 14.7k → 15.2k and 64 → 59 µs (8 pairs);
/// idle RSS +1 to +2.5 MiB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = celeriac::cli::Cli::parse();
    celeriac::cli::run(args)
}
