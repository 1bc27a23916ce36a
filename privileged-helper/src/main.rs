//! `criu-helper`: the only part of criu that runs with privilege.
//!
//! The unprivileged frontend starts it with one end of a `SOCK_SEQPACKET`
//! socketpair at descriptor 3 ([`shared_ipc::HELPER_CHANNEL_FD`]) and drives
//! it with the requests of [`shared_ipc::Request`], one at a time. It does
//! only ptrace, task memory I/O and PID-exact process creation; it has no
//! argument parser and reads no image files. See SECURITY.md.

mod creds;
mod lockdown;
mod pages;
mod ptrace;
mod seclog;
mod serve;
mod spawner;
mod sys;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::{umask, Mode};
use shared_ipc::{Channel, HELPER_CHANNEL_FD};

/// Exit status for a bad start (no argv, no channel, failed set-up).
pub(crate) const EXIT_START: i32 = 2;

fn main() {
    std::process::exit(run());
}

/// Print one line to stderr and give the start-up exit status.
fn fatal(msg: &str) -> i32 {
    eprintln!("criu-helper: {msg}");
    EXIT_START
}

/// The fixed start-up order. Nothing here reads from the channel.
fn run() -> i32 {
    // 0. Who called us: real IDs and supplementary groups (getgroups(2)),
    //    before anything else, for the stubs to take in setuid mode.
    let caller = match creds::Caller::of_this_process() {
        Ok(c) => c,
        Err(_) => return fatal("getgroups failed"),
    };

    // 1. Sanitise what we inherited: argv, the channel descriptor, every
    //    other descriptor, stdin/stdout, the environment, signal dispositions
    //    and mask, umask. Hard rlimits are left alone.
    if std::env::args_os().len() == 0 {
        return fatal("started with argc == 0");
    }
    match sys::socket_type(HELPER_CHANNEL_FD) {
        Ok(libc::SOCK_SEQPACKET) => {}
        _ => return fatal("descriptor 3 is not a SOCK_SEQPACKET socket; run me from criu"),
    }
    if sys::close_from(HELPER_CHANNEL_FD as u32 + 1).is_err() {
        return fatal("close_range failed");
    }
    for fd in [0, 1] {
        if !sys::fd_is_open(fd) && !open_dev_null_at(fd) {
            return fatal("cannot open /dev/null");
        }
    }
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    sys::reset_signal_dispositions();
    if sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).is_err() {
        return fatal("sigprocmask failed");
    }
    umask(Mode::from_bits_truncate(0o077));

    // 2. Fork the spawner before anything else is set up, so that the stubs
    //    it clones never inherit what comes next (the seccomp filter,
    //    NO_NEW_PRIVS, the syslog socket).
    let spawner = match spawner::Spawner::start(&caller) {
        Ok(s) => s,
        Err(e) => return fatal(&format!("cannot start the spawner: {e}")),
    };
    // Only now (the spawner keeps SIG_DFL): a closed image pipe must be an
    // EPIPE error, not the helper's death with its tracees stopped.
    sys::ignore_sigpipe();

    // 3. Connect to syslog (auth) while socket(2) and connect(2) are still
    //    allowed; without a syslog socket logging does nothing.
    let mut log = seclog::SecLog::connect(caller.uid);

    // 4. Keep only the capabilities we need, NO_NEW_PRIVS, seccomp. Every
    //    frame is read after this.
    if let Err(lockdown::StepFailed(what)) = lockdown::lock_down(&caller) {
        spawner.shutdown();
        return fatal(&format!("start-up failed: {what}"));
    }
    log.done(
        "start",
        std::process::id() as i32,
        format_args!("setuid={}", !caller.is_root()),
    );

    // 5. Serve.
    let chan = Channel::new(sys::take_channel_fd());
    serve::Server::new(chan, spawner, caller, log).run()
}

/// Open /dev/null at descriptor `fd` (which is closed).
fn open_dev_null_at(fd: i32) -> bool {
    use nix::fcntl::{open, OFlag};
    match open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
        Ok(got) if got == fd => true,
        Ok(got) => {
            let ok = nix::unistd::dup2(got, fd).is_ok();
            let _ = nix::unistd::close(got);
            ok
        }
        Err(_) => false,
    }
}
