//! Open file descriptions of eventfd, signalfd and timerfd (see eventfd(2),
//! signalfd(2), timerfd_create(2)). Their state is read from
//! `/proc/PID/fdinfo/FD` (see proc(5)) and, for timerfd, timerfd_gettime(2)
//! on criu's duplicate; restore creates a new one in criu with that state.

use super::{fdinfo_field, fdinfo_flags, os_err};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

fn field<'a>(fdinfo: &'a str, key: &str, what: &str) -> Result<&'a str> {
    fdinfo_field(fdinfo, key)
        .ok_or_else(|| Error::parse(format!("{what} fdinfo"), format!("no {key}: line")))
}

fn num(v: &str, radix: u32, key: &str, what: &str) -> Result<u64> {
    u64::from_str_radix(v, radix)
        .map_err(|e| Error::parse(format!("{what} fdinfo"), format!("{key}: {v:?}: {e}")))
}

/// `O_NONBLOCK` of dumped open flags, as the `*_NONBLOCK` creation flag
/// (the same bit for eventfd, signalfd, timerfd and inotify).
fn nonblock(flags: u32) -> i32 {
    flags as i32 & libc::O_NONBLOCK
}

/// An eventfd (see eventfd(2)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EventfdEntry {
    /// The counter (fdinfo `eventfd-count:`, hexadecimal there).
    pub count: u64,
    /// Created with `EFD_SEMAPHORE` (fdinfo `eventfd-semaphore:`, Linux 6.6+).
    pub semaphore: bool,
    /// Open flags without `O_CLOEXEC` (`O_NONBLOCK` matters).
    pub flags: u32,
}

/// Dump an eventfd from its fdinfo text.
///
/// Errors: [`Error::Parse`] for a missing or malformed line (a kernel
/// older than 6.6 does not report the semaphore flag).
pub fn dump_eventfd(fdinfo: &str) -> Result<EventfdEntry> {
    let what = "eventfd";
    Ok(EventfdEntry {
        count: num(
            field(fdinfo, "eventfd-count", what)?,
            16,
            "eventfd-count",
            what,
        )?,
        semaphore: num(
            field(fdinfo, "eventfd-semaphore", what)?,
            10,
            "eventfd-semaphore",
            what,
        )? != 0,
        flags: fdinfo_flags(fdinfo)?,
    })
}

/// A new eventfd in criu with the dumped counter and flags.
///
/// Errors: eventfd(2) or the write(2) of the counter failed.
pub fn restore_eventfd(e: &EventfdEntry) -> Result<OwnedFd> {
    let sem = if e.semaphore { libc::EFD_SEMAPHORE } else { 0 };
    let fd = crate::sys::eventfd(0, libc::EFD_CLOEXEC | sem | nonblock(e.flags))
        .map_err(|err| os_err("eventfd", err))?;
    if e.count != 0 {
        // Adds to the counter (0 here); never blocks below u64::MAX - 1.
        nix::unistd::write(&fd, &e.count.to_ne_bytes())
            .map_err(|err| os_err(format!("eventfd: setting the counter to {}", e.count), err))?;
    }
    super::set_status_flags(fd.as_fd(), e.flags, "eventfd")?;
    Ok(fd)
}

/// A signalfd (see signalfd(2)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SignalfdEntry {
    /// The signals it accepts: bit `n - 1` for signal `n` (fdinfo
    /// `sigmask:`, hexadecimal there).
    pub mask: u64,
    /// Open flags without `O_CLOEXEC` (`O_NONBLOCK` matters).
    pub flags: u32,
}

/// Dump a signalfd from its fdinfo text.
///
/// Errors: [`Error::Parse`] for a missing or malformed line.
pub fn dump_signalfd(fdinfo: &str) -> Result<SignalfdEntry> {
    let what = "signalfd";
    Ok(SignalfdEntry {
        mask: num(field(fdinfo, "sigmask", what)?, 16, "sigmask", what)?,
        flags: fdinfo_flags(fdinfo)?,
    })
}

/// A new signalfd in criu with the dumped mask and flags. Signals pending
/// for the task are restored with the task, not here.
///
/// Errors: signalfd(2) failed.
pub fn restore_signalfd(e: &SignalfdEntry) -> Result<OwnedFd> {
    let fd = crate::sys::signalfd(e.mask, libc::SFD_CLOEXEC | nonblock(e.flags))
        .map_err(|err| os_err(format!("signalfd(mask {:#x})", e.mask), err))?;
    super::set_status_flags(fd.as_fd(), e.flags, "signalfd")?;
    Ok(fd)
}

/// `TFD_TIMER_ABSTIME` (see timerfd_create(2)).
pub const TFD_TIMER_ABSTIME: u32 = 1;
/// `TFD_TIMER_CANCEL_ON_SET` (see timerfd_create(2)).
pub const TFD_TIMER_CANCEL_ON_SET: u32 = 2;

/// A timerfd (see timerfd_create(2)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TimerfdEntry {
    /// Its clock (`CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_BOOTTIME`,
    /// and their `_ALARM` forms; fdinfo `clockid:`).
    pub clockid: i32,
    /// Open flags without `O_CLOEXEC` (`O_NONBLOCK` matters).
    pub flags: u32,
    /// The flags of its last timerfd_settime(2) ([`TFD_TIMER_ABSTIME`],
    /// [`TFD_TIMER_CANCEL_ON_SET`]; fdinfo `settime flags:`, octal there).
    pub settime_flags: u32,
    /// Nanoseconds until the next expiration at dump time; 0 when disarmed.
    pub remaining_ns: u64,
    /// Reload interval in nanoseconds; 0 for a one-shot timer.
    pub interval_ns: u64,
    /// Expirations not yet read (fdinfo `ticks:`).
    pub ticks: u64,
    /// For an absolute timer on a real-time clock, the expiration time on
    /// that clock (nanoseconds since the Epoch) it was armed for: it is
    /// re-armed for that wall-clock time. Other timers are re-armed to
    /// expire `remaining_ns` after restore.
    pub deadline_ns: Option<u64>,
}

fn is_realtime(clockid: i32) -> bool {
    clockid == libc::CLOCK_REALTIME || clockid == libc::CLOCK_REALTIME_ALARM
}

fn clock_now_ns(clockid: i32) -> Result<u64> {
    // The _ALARM clocks read as their base clocks.
    let base = match clockid {
        libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        c => c,
    };
    let t = nix::time::clock_gettime(nix::time::ClockId::from_raw(base))
        .map_err(|e| os_err(format!("clock_gettime({clockid})"), e))?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Dump a timerfd: clock, flags and ticks from its fdinfo text, the
/// remaining time and interval from timerfd_gettime(2) on `fd`.
///
/// Errors: [`Error::Parse`] for a missing or malformed line; a failing
/// timerfd_gettime.
pub fn dump_timerfd(fd: BorrowedFd<'_>, fdinfo: &str) -> Result<TimerfdEntry> {
    let what = "timerfd";
    let clockid = field(fdinfo, "clockid", what)?
        .parse::<i32>()
        .map_err(|e| Error::parse("timerfd fdinfo", format!("clockid: {e}")))?;
    let settime_flags = num(
        field(fdinfo, "settime flags", what)?,
        8,
        "settime flags",
        what,
    )? as u32;
    let ticks = num(field(fdinfo, "ticks", what)?, 10, "ticks", what)?;
    let (remaining_ns, interval_ns) =
        crate::sys::timerfd_gettime(fd).map_err(|e| os_err("timerfd_gettime", e))?;
    let deadline_ns =
        if remaining_ns != 0 && settime_flags & TFD_TIMER_ABSTIME != 0 && is_realtime(clockid) {
            Some(clock_now_ns(clockid)? + remaining_ns)
        } else {
            None
        };
    Ok(TimerfdEntry {
        clockid,
        flags: fdinfo_flags(fdinfo)?,
        settime_flags,
        remaining_ns,
        interval_ns,
        ticks,
        deadline_ns,
    })
}

/// A new timerfd in criu, armed as dumped (see [`TimerfdEntry`] for how
/// absolute timers are re-armed) and with its unread expirations
/// (`TFD_IOC_SET_TICKS`).
///
/// Errors: timerfd_create, timerfd_settime or the ioctl failed (an
/// `_ALARM` clock needs `CAP_WAKE_ALARM`; ticks need a kernel with
/// `CONFIG_CHECKPOINT_RESTORE`).
pub fn restore_timerfd(e: &TimerfdEntry) -> Result<OwnedFd> {
    let fd = crate::sys::timerfd_create(e.clockid, libc::TFD_CLOEXEC | nonblock(e.flags))
        .map_err(|err| os_err(format!("timerfd_create(clock {})", e.clockid), err))?;
    if e.remaining_ns != 0 {
        let (flags, value) = match e.deadline_ns {
            Some(d) => (e.settime_flags, d),
            None if e.settime_flags & TFD_TIMER_ABSTIME != 0 => {
                (e.settime_flags, clock_now_ns(e.clockid)? + e.remaining_ns)
            }
            None => (0, e.remaining_ns),
        };
        crate::sys::timerfd_settime(fd.as_fd(), flags as i32, value, e.interval_ns)
            .map_err(|err| os_err("timerfd_settime", err))?;
    }
    if e.ticks != 0 {
        crate::sys::timerfd_set_ticks(fd.as_fd(), e.ticks)
            .map_err(|err| os_err(format!("timerfd: TFD_IOC_SET_TICKS({})", e.ticks), err))?;
    }
    super::set_status_flags(fd.as_fd(), e.flags, "timerfd")?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn fdinfo(fd: &OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap()
    }
    fn read_u64(fd: &OwnedFd) -> nix::Result<u64> {
        let mut b = [0u8; 8];
        nix::unistd::read(fd.as_raw_fd(), &mut b).map(|_| u64::from_ne_bytes(b))
    }
    fn getfl(fd: &OwnedFd) -> i32 {
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap()
    }

    #[test]
    fn eventfd_counter_and_semaphore() {
        let fd = crate::sys::eventfd(3, libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK).unwrap();
        nix::unistd::write(&fd, &(1u64 << 40).to_ne_bytes()).unwrap();
        let e = dump_eventfd(&fdinfo(&fd)).unwrap();
        assert_eq!(e.count, (1 << 40) + 3);
        assert!(e.semaphore);
        let n = restore_eventfd(&e).unwrap();
        assert_eq!(dump_eventfd(&fdinfo(&n)).unwrap(), e);
        assert_ne!(getfl(&n) & libc::O_NONBLOCK, 0);
        assert_eq!(read_u64(&n).unwrap(), 1, "semaphore reads 1");

        let plain = crate::sys::eventfd(0, 0).unwrap();
        let e = dump_eventfd(&fdinfo(&plain)).unwrap();
        assert_eq!((e.count, e.semaphore), (0, false));
        let n = restore_eventfd(&e).unwrap();
        assert_eq!(getfl(&n) & libc::O_NONBLOCK, 0);
        assert_eq!(dump_eventfd(&fdinfo(&n)).unwrap(), e);
    }

    #[test]
    fn signalfd_mask_with_realtime_signals() {
        let mask = (1u64 << (libc::SIGUSR1 - 1)) | (1u64 << 39);
        let fd = crate::sys::signalfd(mask, libc::SFD_NONBLOCK).unwrap();
        let e = dump_signalfd(&fdinfo(&fd)).unwrap();
        assert_eq!(e.mask, mask);
        let n = restore_signalfd(&e).unwrap();
        assert_eq!(dump_signalfd(&fdinfo(&n)).unwrap(), e);
    }

    #[test]
    fn timerfd_relative_interval_and_ticks() {
        let fd = crate::sys::timerfd_create(libc::CLOCK_MONOTONIC, 0).unwrap();
        // Expire once quickly, then every 100 s.
        crate::sys::timerfd_settime(fd.as_fd(), 0, 1_000_000, 100_000_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let e = dump_timerfd(fd.as_fd(), &fdinfo(&fd)).unwrap();
        assert_eq!(e.ticks, 1);
        assert_eq!(e.interval_ns, 100_000_000_000);
        assert!(e.remaining_ns > 99_000_000_000 && e.remaining_ns < 100_000_000_000);
        assert_eq!(e.deadline_ns, None);
        let n = restore_timerfd(&e).unwrap();
        let m = dump_timerfd(n.as_fd(), &fdinfo(&n)).unwrap();
        assert_eq!(
            (m.clockid, m.ticks, m.interval_ns),
            (e.clockid, 1, e.interval_ns)
        );
        assert!(e.remaining_ns - m.remaining_ns < 1_000_000_000);
        assert_eq!(read_u64(&n).unwrap(), 1, "the unread expiration");
    }

    #[test]
    fn timerfd_absolute_realtime_keeps_deadline() {
        let fd = crate::sys::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK).unwrap();
        let at = clock_now_ns(libc::CLOCK_REALTIME).unwrap() + 50_000_000_000;
        crate::sys::timerfd_settime(fd.as_fd(), TFD_TIMER_ABSTIME as i32, at, 0).unwrap();
        let e = dump_timerfd(fd.as_fd(), &fdinfo(&fd)).unwrap();
        assert_eq!(e.settime_flags, TFD_TIMER_ABSTIME);
        let d = e.deadline_ns.unwrap();
        assert!(d.abs_diff(at) < 100_000_000, "deadline {d} vs {at}");
        let n = restore_timerfd(&e).unwrap();
        let m = dump_timerfd(n.as_fd(), &fdinfo(&n)).unwrap();
        assert_eq!(m.settime_flags, TFD_TIMER_ABSTIME);
        assert!(m.deadline_ns.unwrap().abs_diff(at) < 100_000_000);
        assert_ne!(getfl(&n) & libc::O_NONBLOCK, 0);
        assert_eq!(read_u64(&n), Err(nix::errno::Errno::EAGAIN));

        // Disarmed: stays disarmed.
        let idle = crate::sys::timerfd_create(libc::CLOCK_BOOTTIME, 0).unwrap();
        let e = dump_timerfd(idle.as_fd(), &fdinfo(&idle)).unwrap();
        assert_eq!((e.remaining_ns, e.ticks), (0, 0));
        let n = restore_timerfd(&e).unwrap();
        assert_eq!(dump_timerfd(n.as_fd(), &fdinfo(&n)).unwrap(), e);
    }
}
