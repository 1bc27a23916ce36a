//! Command line, spelled like upstream criu so existing scripts work:
//! `criu dump -t PID -D DIR -o LOG -v4 [-s|-R] [-j]`,
//! `criu restore -D DIR [-d] [--pidfile F] [-j] -o LOG -v4`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Checkpoint/restore in userspace, privilege-separated.
#[derive(Parser, Debug)]
#[command(name = "criu", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Checkpoint a running process into image files.
    Dump(DumpArgs),
    /// Restore processes from image files.
    Restore(RestoreArgs),
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Directory of the image files.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub images_dir: PathBuf,
    /// Log file; relative paths are inside the images directory.
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Verbosity: -v alone is 3 (info), -vN sets N (0..4), -vv.. counts.
    #[arg(short = 'v', long = "verbosity", value_name = "N", num_args = 0..=1,
          default_missing_value = "v", allow_hyphen_values = false)]
    pub verbosity: Option<String>,
    /// The process is attached to the caller's terminal (a shell job).
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
}

impl Common {
    /// The `-v` level: default 2 (warnings), like upstream.
    pub fn level(&self) -> u8 {
        match self.verbosity.as_deref() {
            None => 2,
            Some(v) if !v.is_empty() && v.chars().all(|c| c == 'v') => (2 + v.len()).min(4) as u8,
            Some(v) => v.parse::<u8>().map(|n| n.min(4)).unwrap_or(2),
        }
    }

    /// The log file path, resolved against the images directory.
    pub fn log_path(&self) -> Option<PathBuf> {
        self.log_file.as_ref().map(|f| {
            if f.is_absolute() {
                f.clone()
            } else {
                self.images_dir.join(f)
            }
        })
    }
}

/// `criu dump`.
#[derive(Args, Debug, Clone)]
pub struct DumpArgs {
    /// PID of the process to dump.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub pid: i32,
    /// Leave the process stopped after dumping.
    #[arg(short = 's', long = "leave-stopped", conflicts_with = "leave_running")]
    pub leave_stopped: bool,
    /// Leave the process running after dumping.
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// Common options.
    #[command(flatten)]
    pub common: Common,
}

/// `criu restore`.
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Detach from the restored process once it runs.
    #[arg(short = 'd', long = "restore-detached")]
    pub detach: bool,
    /// Write the restored root PID to this file.
    #[arg(long = "pidfile", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Common options.
    #[command(flatten)]
    pub common: Common,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_spelling_parses() {
        let c = Cli::try_parse_from([
            "criu", "dump", "-t", "123", "-D", "/tmp/x", "-o", "d.log", "-v4", "-R", "-j",
        ])
        .unwrap();
        let Command::Dump(d) = c.command else {
            panic!()
        };
        assert_eq!(d.pid, 123);
        assert!(d.leave_running && d.common.shell_job);
        assert_eq!(d.common.level(), 4);
        assert_eq!(d.common.log_path().unwrap(), PathBuf::from("/tmp/x/d.log"));
        let c = Cli::try_parse_from([
            "criu",
            "restore",
            "-D",
            "/tmp/x",
            "-d",
            "--pidfile",
            "/tmp/p",
            "-v",
        ])
        .unwrap();
        let Command::Restore(r) = c.command else {
            panic!()
        };
        assert!(r.detach);
        assert_eq!(r.common.level(), 3);
        assert!(Cli::try_parse_from(["criu", "dump", "-t", "1", "-D", "x", "-s", "-R"]).is_err());
    }
}
