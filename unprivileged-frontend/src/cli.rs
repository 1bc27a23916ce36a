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
    /// Print the contents of a checkpoint or of one image file.
    Show(ShowArgs),
    /// Check that the kernel has what dump and restore need.
    Check(CheckArgs),
    /// Run one system call inside a running process.
    Exec(ExecArgs),
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

/// The `-v` level from the option's value: default 2 (warnings), like
/// upstream; `-v` alone is 3, `-vN` is N, `-vv..` counts.
pub fn parse_level(v: Option<&str>) -> u8 {
    match v {
        None => 2,
        Some(v) if !v.is_empty() && v.chars().all(|c| c == 'v') => (2 + v.len()).min(4) as u8,
        Some(v) => v.parse::<u8>().map(|n| n.min(4)).unwrap_or(2),
    }
}

impl Common {
    /// The `-v` level: default 2 (warnings), like upstream.
    pub fn level(&self) -> u8 {
        parse_level(self.verbosity.as_deref())
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
    /// Save file locks (POSIX, OFD, flock, leases); without it a process
    /// holding one is refused.
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// Largest deleted-but-open file saved into the images, in bytes
    /// (suffixes K, M, G); default 1M.
    #[arg(long = "ghost-limit", value_name = "SIZE", value_parser = parse_size, default_value = "1M")]
    pub ghost_limit: u64,
    /// Allow UNIX sockets connected to a peer outside the dumped tree:
    /// restore connects them to the peer's name again.
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// An external resource the dump may refer to; `unix[INO]` allows the
    /// UNIX socket with inode INO (or the one connected to INO) to have its
    /// peer outside the dumped tree, as --ext-unix-sk does for all.
    #[arg(long = "external", value_name = "KIND[ID]")]
    pub external: Vec<String>,
    /// Save established TCP connections, so they continue after restore
    /// (TCP repair mode, see tcp(7); needs CAP_NET_ADMIN).
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Save established (and half-closed) TCP connections as closed
    /// sockets: they are neither locked nor repaired.
    #[arg(long = "tcp-close")]
    pub tcp_close: bool,
    /// How packets of saved connections are held back while they are down:
    /// `nftables` (default) or `skip`.
    #[arg(
        long = "network-lock",
        value_name = "METHOD",
        value_enum,
        default_value_t
    )]
    pub network_lock: crate::netlock::Method,
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
    /// Accepted for upstream's scripts: connections saved with
    /// `--tcp-established` are always restored (unless `--tcp-close`).
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Restore saved TCP connections as closed sockets.
    #[arg(long = "tcp-close")]
    pub tcp_close: bool,
    /// Accepted for upstream's scripts: a lock the dump left is always
    /// removed at the end of the restore.
    #[arg(
        long = "network-lock",
        value_name = "METHOD",
        value_enum,
        default_value_t
    )]
    pub network_lock: crate::netlock::Method,
    /// Common options.
    #[command(flatten)]
    pub common: Common,
}

/// Logging options of the commands that take no images directory.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log file (relative paths are relative to the current directory).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Verbosity: -v alone is 3 (info), -vN sets N (0..4), -vv.. counts.
    #[arg(short = 'v', long = "verbosity", value_name = "N", num_args = 0..=1,
          default_missing_value = "v", allow_hyphen_values = false)]
    pub verbosity: Option<String>,
}

impl LogArgs {
    /// The `-v` level.
    pub fn level(&self) -> u8 {
        parse_level(self.verbosity.as_deref())
    }
}

/// `criu show`.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["images_dir", "file"])))]
pub struct ShowArgs {
    /// Show the whole checkpoint in this directory.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub images_dir: Option<PathBuf>,
    /// Decode one image file (relative to -D when both are given).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Also dump the stored page contents (hex and printable).
    #[arg(short = 'c', long = "contents")]
    pub contents: bool,
    /// With -c: most bytes of page contents shown per process (or file).
    #[arg(long = "max-bytes", value_name = "N", default_value_t = 4096)]
    pub max_bytes: u64,
    /// Print JSON (the shape is documented in docs/SHOW.md).
    #[arg(long = "json")]
    pub json: bool,
}

/// `criu check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Skip features that mainstream kernels (5.15, the oldest supported)
    /// lack.
    #[arg(long = "ms")]
    pub ms: bool,
    /// Check only this feature (`--feature list` lists them).
    #[arg(long = "feature", value_name = "NAME")]
    pub feature: Option<String>,
    /// Also check optional features (for things not every dump needs).
    #[arg(long = "all")]
    pub all: bool,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// `criu exec`.
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// PID of the process to run the call in.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub pid: i32,
    /// The system call: an x86-64 name (e.g. `getpid`) or a number.
    #[arg(value_name = "SYSCALL")]
    pub syscall: String,
    /// Up to six arguments: numbers (decimal, 0x hex, negative) or `&STRING`
    /// (copied into the process; its address is passed).
    #[arg(
        value_name = "ARG",
        allow_hyphen_values = true,
        trailing_var_arg = true
    )]
    pub args: Vec<String>,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// A size in bytes with an optional K, M or G suffix (powers of 1024), as
/// upstream criu's `--ghost-limit` takes it.
///
/// Errors: not a number, or too large.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (a number, optionally with K, M or G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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
        assert!(!r.tcp_close);
        let c = Cli::try_parse_from([
            "criu",
            "dump",
            "-t",
            "1",
            "-D",
            "x",
            "--tcp-established",
            "--network-lock",
            "skip",
        ])
        .unwrap();
        let Command::Dump(d) = c.command else {
            panic!()
        };
        assert!(d.tcp_established && !d.tcp_close);
        assert_eq!(d.network_lock, crate::netlock::Method::Skip);
        assert!(
            Cli::try_parse_from(["criu", "dump", "-t", "1", "-D", "x", "--network-lock", "x"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["criu", "dump", "-t", "1", "-D", "x", "-s", "-R"]).is_err());
    }

    #[test]
    fn show_check_exec_parse() {
        let c = Cli::try_parse_from(["criu", "show", "-D", "d", "-c", "--json"]).unwrap();
        let Command::Show(s) = c.command else {
            panic!()
        };
        assert!(s.contents && s.json && s.max_bytes == 4096);
        assert!(Cli::try_parse_from(["criu", "show"]).is_err());
        let c = Cli::try_parse_from(["criu", "check", "--feature", "list", "--ms"]).unwrap();
        let Command::Check(k) = c.command else {
            panic!()
        };
        assert_eq!(k.feature.as_deref(), Some("list"));
        assert!(k.ms && !k.all);
        let c = Cli::try_parse_from(["criu", "exec", "-t", "7", "lseek", "3", "-1", "0"]).unwrap();
        let Command::Exec(e) = c.command else {
            panic!()
        };
        assert_eq!((e.pid, e.syscall.as_str()), (7, "lseek"));
        assert_eq!(e.args, ["3", "-1", "0"]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10k"), Ok(10 << 10));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
