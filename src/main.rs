//! The `switchboard` binary: parse the command line and run the chosen service.

use std::process::ExitCode;

fn main() -> ExitCode {
    switchboard::cli::main()
}
