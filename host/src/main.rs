//! The `celeriac` command: argument parsing lives in `cli`, everything else in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = celeriac::cli::Cli::parse();
    celeriac::cli::run(args)
}
