//! `criu exec -t PID SYSCALL [ARG ...]`: run one system call inside a
//! running process and print what it returned.
//!
//! It works exactly like the dump's injected calls: the helper seizes the
//! task (and, in setuid mode, applies the same checks as for a dump), every
//! signal is blocked while we work, a `syscall` instruction already in the
//! task is used as the gadget, `&STRING` arguments are copied into a scratch
//! area mapped with an injected `mmap` and unmapped afterwards, and the task
//! is released with [`ReleaseMode::Resume`]: the helper puts back the
//! registers and signal mask it saved at seize. Only the effect of the call
//! itself remains.

#![forbid(unsafe_code)]

pub mod table;

use crate::cli::ExecArgs;
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::remote::{errno_of, find_gadget, Remote};
use crate::{debug, info};
use shared_ipc::ReleaseMode;
use std::path::Path;

/// One argument of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A number passed as is.
    Num(u64),
    /// A string copied (NUL-terminated) into the task; its address is passed.
    Str(String),
}

/// Parse `SYSCALL`: a name from the x86-64 table or a number.
///
/// Errors: [`Error::Refused`] naming the unknown call.
pub fn parse_syscall(s: &str) -> Result<i64> {
    if let Some(nr) = table::number(s) {
        return Ok(nr);
    }
    match parse_num(s) {
        Some(n) if (0..1024).contains(&(n as i64)) => Ok(n as i64),
        _ => Err(Error::Refused(format!(
            "unknown system call {s:?}: give an x86-64 name (e.g. getpid, openat) or a number"
        ))),
    }
}

/// Parse a number: decimal, `0x` hex, either optionally negative (two's
/// complement, as a register holds it).
pub fn parse_num(s: &str) -> Option<u64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let v = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => body.parse::<u64>().ok()?,
    };
    if neg {
        if v > 1 << 63 {
            return None;
        }
        Some(v.wrapping_neg())
    } else {
        Some(v)
    }
}

/// Parse one `ARG`.
///
/// Errors: [`Error::Refused`] naming the bad argument.
pub fn parse_arg(s: &str) -> Result<Arg> {
    if let Some(text) = s.strip_prefix('&') {
        if text.contains('\0') {
            return Err(Error::Refused(format!(
                "argument {s:?}: a string may not contain NUL"
            )));
        }
        return Ok(Arg::Str(text.to_string()));
    }
    parse_num(s).map(Arg::Num).ok_or_else(|| {
        Error::Refused(format!(
            "argument {s:?} is neither a number (decimal, 0x hex, negative) nor &STRING"
        ))
    })
}

/// How a raw return value is printed: the number, and for `-4095..=-1` the
/// errno name, e.g. `-2 (ENOENT)`.
pub fn format_result(ret: i64) -> String {
    match errno_of(ret) {
        Some(e) => format!("{ret} ({e:?})"),
        None => ret.to_string(),
    }
}

/// Run `criu exec`.
///
/// Errors: bad arguments, a refused or missing target, helper failures.
/// The call's own failure is not an error: it is printed as `-errno (NAME)`.
pub fn run(a: &ExecArgs) -> Result<u8> {
    let nr = parse_syscall(&a.syscall)?;
    let args = a
        .args
        .iter()
        .map(|s| parse_arg(s))
        .collect::<Result<Vec<Arg>>>()?;
    if args.len() > 6 {
        return Err(Error::Refused(format!(
            "{} arguments given; a system call takes at most 6",
            args.len()
        )));
    }
    let pid = a.pid;
    precheck(pid)?;

    let mut h = Helper::spawn()?;
    info!("seizing pid {pid}");
    h.seize(pid)?;
    let result = exec_seized(&mut h, pid, nr, &args);
    // Whatever happened, the helper puts back the registers and the signal
    // mask it saved at seize and lets the task go on.
    let released = h.release(pid, ReleaseMode::Resume);
    h.finish();
    let ret = result?;
    released?;
    println!("{}", format_result(ret));
    Ok(0)
}

/// Refuse early, with a clear message, what the helper would refuse less
/// clearly (the helper re-checks everything itself).
fn precheck(pid: i32) -> Result<()> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::Refused(format!("pid {pid} does not exist")));
    }
    let st = crate::proc::read_status(pid)?;
    match st.state {
        'Z' | 'X' => Err(Error::Refused(format!(
            "pid {pid} is a zombie; it runs no more system calls"
        ))),
        'T' | 't' => Err(Error::Unsupported(format!(
            "pid {pid} is stopped (state {}); exec on stopped processes is not supported",
            st.state
        ))),
        _ if st.tracer_pid != 0 => Err(Error::Refused(format!(
            "pid {pid} is already traced by pid {}",
            st.tracer_pid
        ))),
        _ if st.threads > 1 => Err(Error::Unsupported(format!(
            "pid {pid} has {} threads; multi-threaded processes are not supported yet",
            st.threads
        ))),
        _ => Ok(()),
    }
}

fn exec_seized(h: &mut Helper, pid: i32, nr: i64, args: &[Arg]) -> Result<i64> {
    let (regs, _xstate) = h.get_regs(pid)?;
    debug!(
        "pid {pid}: stopped at rip {:#x} (orig_rax {})",
        regs.rip, regs.orig_rax as i64
    );
    // No handler of the task may run while we drive it.
    h.set_sigmask(pid, !0)?;
    let vmas = crate::proc::read_maps(pid)?;
    let gadget = find_gadget(h, pid, &vmas)?;
    debug!("pid {pid}: syscall gadget at {gadget:#x}");
    h.set_gadget(pid, gadget)?;

    let strings: usize = args
        .iter()
        .map(|a| match a {
            Arg::Str(s) => s.len() + 1,
            Arg::Num(_) => 0,
        })
        .sum();
    if strings == 0 {
        return run_call(h, &Remote::new(pid), nr, args);
    }
    let len = (strings as u64).div_ceil(4096) * 4096;
    let mut remote = Remote::new(pid);
    remote.scratch = remote.call(
        h,
        "mmap(scratch)",
        libc::SYS_mmap,
        [
            0,
            len,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    remote.scratch_len = len;
    let ret = run_call(h, &remote, nr, args);
    let unmapped = remote.call(
        h,
        "munmap(scratch)",
        libc::SYS_munmap,
        [remote.scratch, len, 0, 0, 0, 0],
    );
    let ret = ret?;
    unmapped?;
    Ok(ret)
}

fn run_call(h: &mut Helper, r: &Remote, nr: i64, args: &[Arg]) -> Result<i64> {
    let mut regs = [0u64; 6];
    let mut off = 0u64;
    for (slot, a) in regs.iter_mut().zip(args) {
        *slot = match a {
            Arg::Num(n) => *n,
            Arg::Str(s) => {
                let addr = r.put_cstr(h, off, s)?;
                off += s.len() as u64 + 1;
                addr
            }
        };
    }
    let name = table::name(nr).unwrap_or("?");
    info!("pid {}: running {name} ({nr}) with {regs:x?}", r.pid);
    r.raw(h, nr, regs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_num("0"), Some(0));
        assert_eq!(parse_num("42"), Some(42));
        assert_eq!(parse_num("0x1F"), Some(31));
        assert_eq!(parse_num("-1"), Some(u64::MAX));
        assert_eq!(parse_num("-0x10"), Some((-16i64) as u64));
        assert_eq!(parse_num("abc"), None);
        assert_eq!(parse_num(""), None);
        assert_eq!(parse_num("-"), None);
    }

    #[test]
    fn args_and_calls() {
        assert_eq!(parse_arg("&/foo").unwrap(), Arg::Str("/foo".into()));
        assert_eq!(parse_arg("&").unwrap(), Arg::Str(String::new()));
        assert_eq!(parse_arg("7").unwrap(), Arg::Num(7));
        assert!(parse_arg("seven").is_err());
        assert_eq!(parse_syscall("getpid").unwrap(), 39);
        assert_eq!(parse_syscall("39").unwrap(), 39);
        let e = parse_syscall("getpidd").unwrap_err().to_string();
        assert!(e.contains("unknown system call"), "{e}");
        assert!(parse_syscall("-1").is_err());
    }

    #[test]
    fn results() {
        assert_eq!(format_result(1234), "1234");
        assert_eq!(format_result(-2), "-2 (ENOENT)");
        assert_eq!(format_result(-4096), "-4096");
    }
}
