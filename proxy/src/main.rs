//! The `jitproxy` command: parse the command line, run it, exit with its code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use jitproxy::cmd::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = cmd::init_logging(cli.log_format);
    cmd::run(cli).into()
}
