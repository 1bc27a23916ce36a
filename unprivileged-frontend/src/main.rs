//! `criu`: the unprivileged frontend binary.

use clap::Parser;
use criu_frontend::cli::{Cli, Command, Common, LogArgs};
use std::process::ExitCode;

fn open_log(c: &Common) -> Result<(), String> {
    open_log_at(c.log_path(), c.level())
}

fn open_log_args(l: &LogArgs) -> Result<(), String> {
    open_log_at(l.log_file.clone(), l.level())
}

fn open_log_at(path: Option<std::path::PathBuf>, level: u8) -> Result<(), String> {
    let file = match path {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    criu_frontend::log::init(level, file);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (opened, to_file) = match &cli.command {
        Command::Dump(d) => (open_log(&d.common), d.common.log_file.is_some()),
        Command::Restore(r) => (open_log(&r.common), r.common.log_file.is_some()),
        Command::Show(_) => (open_log_at(None, 2), false),
        Command::Check(c) => (open_log_args(&c.log), c.log.log_file.is_some()),
        Command::Exec(x) => (open_log_args(&x.log), x.log.log_file.is_some()),
    };
    if let Err(e) = opened {
        eprintln!("Error: {e}");
        return ExitCode::from(1);
    }
    let result = match &cli.command {
        Command::Dump(d) => criu_frontend::dump::run(d).map(|()| 0),
        Command::Restore(r) => criu_frontend::restore::run(r),
        Command::Show(s) => criu_frontend::show::run(s),
        Command::Check(c) => criu_frontend::check::run(c),
        Command::Exec(x) => criu_frontend::exec::run(x),
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
