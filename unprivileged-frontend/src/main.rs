//! `criu`: the unprivileged frontend binary.

use clap::Parser;
use criu_frontend::cli::{Cli, Command, Common};
use std::process::ExitCode;

fn open_log(c: &Common) -> Result<(), String> {
    let file = match c.log_path() {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    criu_frontend::log::init(c.level(), file);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.command {
        Command::Dump(d) => &d.common,
        Command::Restore(r) => &r.common,
    };
    if let Err(e) = open_log(common) {
        eprintln!("Error: {e}");
        return ExitCode::from(1);
    }
    let to_file = common.log_file.is_some();
    let result = match &cli.command {
        Command::Dump(d) => criu_frontend::dump::run(d).map(|()| 0),
        Command::Restore(r) => criu_frontend::restore::run(r),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if to_file {
                criu_frontend::error!("{e}");
            }
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}
