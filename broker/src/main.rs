//! The `agentwire` binary: the broker (`serve`) and its command-line tools. Parses flags, sets
//! up logging and hands over to [`cli`].

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
