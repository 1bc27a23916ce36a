//! Parsers for the /proc files dump reads (see proc(5)). Each parser takes
//! the file's text so it can be unit-tested on samples; the `read_*`
//! functions add the path to errors.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `/proc/PID/<name>`.
pub fn path(pid: i32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// Read a /proc file as text.
///
/// Errors: [`Error::Proc`] naming the path.
pub fn read_text(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(|e| Error::proc(p, e))
}

/// Read a /proc file as bytes.
///
/// Errors: [`Error::Proc`] naming the path.
pub fn read_bytes(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| Error::proc(p, e))
}

/// Read a /proc symlink.
///
/// Errors: [`Error::Proc`] naming the path.
pub fn read_link(p: &Path) -> Result<String> {
    std::fs::read_link(p)
        .map(|t| t.to_string_lossy().into_owned())
        .map_err(|e| Error::proc(p, e))
}

/// `PF_EXITING` in the flags field of `/proc/PID/stat`: the task has
/// begun to exit (set at the start of the kernel's `do_exit`, before its
/// memory is freed; include/linux/sched.h, `PF_EXITING 0x00000004`).
pub const PF_EXITING: u32 = 0x4;

/// Fields of `/proc/PID/stat` that dump uses (numbers from proc(5)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// (3) state letter.
    pub state: char,
    /// (4) parent PID.
    pub ppid: i32,
    /// (5) process group.
    pub pgrp: i32,
    /// (6) session.
    pub session: i32,
    /// (7) controlling terminal: its device number (minor in bits 31..20
    /// and 7..0, major in bits 15..8), 0 when none.
    pub tty_nr: u32,
    /// (8) foreground process group of the controlling terminal, -1 when
    /// none.
    pub tpgid: i32,
    /// (9) the kernel's `PF_*` flags of the task ([`PF_EXITING`]...).
    pub flags: u32,
    /// (20) number of threads.
    pub num_threads: i64,
    /// (26) start of code.
    pub start_code: u64,
    /// (27) end of code.
    pub end_code: u64,
    /// (28) start of stack.
    pub start_stack: u64,
    /// (45) start of data.
    pub start_data: u64,
    /// (46) end of data.
    pub end_data: u64,
    /// (47) start of heap.
    pub start_brk: u64,
    /// (48) start of arguments.
    pub arg_start: u64,
    /// (49) end of arguments.
    pub arg_end: u64,
    /// (50) start of environment.
    pub env_start: u64,
    /// (51) end of environment.
    pub env_end: u64,
}

/// Parse `/proc/PID/stat`. The command name may hold spaces and
/// parentheses, so fields are counted after the last `)`.
///
/// Errors: a description of the malformed part.
pub fn parse_stat(text: &str) -> std::result::Result<Stat, String> {
    let close = text.rfind(')').ok_or("no ')' after the command name")?;
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // f[0] is field 3.
    let num = |n: usize| -> std::result::Result<u64, String> {
        f.get(n - 3)
            .ok_or_else(|| format!("field {n} missing"))?
            .parse::<i64>()
            .map(|v| v as u64)
            .map_err(|e| format!("field {n}: {e}"))
    };
    Ok(Stat {
        state: f
            .first()
            .and_then(|s| s.chars().next())
            .ok_or("state missing")?,
        ppid: num(4)? as i32,
        pgrp: num(5)? as i32,
        session: num(6)? as i32,
        tty_nr: num(7)? as u32,
        tpgid: num(8)? as i32,
        flags: num(9)? as u32,
        num_threads: num(20)? as i64,
        start_code: num(26)?,
        end_code: num(27)?,
        start_stack: num(28)?,
        start_data: num(45)?,
        end_data: num(46)?,
        start_brk: num(47)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
    })
}

/// Read and parse `/proc/PID/stat`.
///
/// Errors: read or parse errors naming the path.
pub fn read_stat(pid: i32) -> Result<Stat> {
    let p = path(pid, "stat");
    parse_stat(&read_text(&p)?).map_err(|d| Error::parse(&p, d))
}

/// Fields of `/proc/PID/status` that dump uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Command name (`Name`), up to 15 bytes.
    pub name: String,
    /// Thread group ID (`Tgid`): the process a thread belongs to.
    pub tgid: i32,
    /// Parent's PID (`PPid`).
    pub ppid: i32,
    /// State letter.
    pub state: char,
    /// Tracer PID, 0 when not traced.
    pub tracer_pid: i32,
    /// Real, effective, saved, filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved, filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Number of threads.
    pub threads: u32,
    /// File creation mask.
    pub umask: u32,
    /// Capability sets.
    pub cap_inh: u64,
    /// Permitted.
    pub cap_prm: u64,
    /// Effective.
    pub cap_eff: u64,
    /// Bounding.
    pub cap_bnd: u64,
    /// Ambient.
    pub cap_amb: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
    /// Seccomp mode (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
    /// A kernel thread (`Kthread: 1`, Linux 6.x).
    pub kthread: bool,
    /// Ignored signals (`SigIgn`), bit `n - 1` for signal `n`.
    pub sig_ign: u64,
    /// Signals with a handler (`SigCgt`).
    pub sig_cgt: u64,
}

/// Parse `/proc/PID/status`.
///
/// Errors: a description of the malformed line.
pub fn parse_status(text: &str) -> std::result::Result<Status, String> {
    let mut s = Status::default();
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        let ids = |v: &str| -> std::result::Result<[u32; 4], String> {
            let n: Vec<u32> = v
                .split_whitespace()
                .map(|x| x.parse::<u32>().map_err(|e| format!("{key}: {e}")))
                .collect::<std::result::Result<_, _>>()?;
            n.try_into().map_err(|_| format!("{key}: expected 4 ids"))
        };
        let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|e| format!("{key}: {e}"));
        match key {
            "Name" => s.name = val.to_string(),
            "Tgid" => s.tgid = val.parse().map_err(|e| format!("{key}: {e}"))?,
            "PPid" => s.ppid = val.parse().map_err(|e| format!("{key}: {e}"))?,
            "State" => s.state = val.chars().next().unwrap_or('?'),
            "TracerPid" => s.tracer_pid = val.parse().map_err(|e| format!("{key}: {e}"))?,
            "Uid" => s.uids = ids(val)?,
            "Gid" => s.gids = ids(val)?,
            "Groups" => {
                s.groups = val
                    .split_whitespace()
                    .map(|x| x.parse::<u32>().map_err(|e| format!("{key}: {e}")))
                    .collect::<std::result::Result<_, _>>()?
            }
            "Threads" => s.threads = val.parse().map_err(|e| format!("{key}: {e}"))?,
            "Umask" => s.umask = u32::from_str_radix(val, 8).map_err(|e| format!("{key}: {e}"))?,
            "CapInh" => s.cap_inh = hex(val)?,
            "CapPrm" => s.cap_prm = hex(val)?,
            "CapEff" => s.cap_eff = hex(val)?,
            "CapBnd" => s.cap_bnd = hex(val)?,
            "CapAmb" => s.cap_amb = hex(val)?,
            "NoNewPrivs" => s.no_new_privs = val == "1",
            "Seccomp" => s.seccomp = val.parse().map_err(|e| format!("{key}: {e}"))?,
            "Kthread" => s.kthread = val == "1",
            "SigIgn" => s.sig_ign = hex(val)?,
            "SigCgt" => s.sig_cgt = hex(val)?,
            _ => {}
        }
    }
    Ok(s)
}

/// Read and parse `/proc/PID/status`.
///
/// Errors: read or parse errors naming the path.
pub fn read_status(pid: i32) -> Result<Status> {
    let p = path(pid, "status");
    parse_status(&read_text(&p)?).map_err(|d| Error::parse(&p, d))
}

/// One entry of `/proc/PID/smaps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmapsVma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `rwxp` / `rwxs` permission string.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Device `major:minor` (hex, as printed).
    pub dev: (u32, u32),
    /// Inode.
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, ...); empty for plain anonymous.
    pub name: String,
    /// The two-letter `VmFlags`, as printed (space separated; empty from
    /// `maps`). One string, not one per flag: a process may have 65,530
    /// mappings.
    pub vm_flags: String,
}

impl SmapsVma {
    /// Readable.
    pub fn read(&self) -> bool {
        self.perms.as_bytes().first() == Some(&b'r')
    }
    /// Writable.
    pub fn write(&self) -> bool {
        self.perms.as_bytes().get(1) == Some(&b'w')
    }
    /// Executable.
    pub fn exec(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
    /// Shared mapping.
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
    /// Has VmFlag `f`.
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.split_whitespace().any(|x| x == f)
    }
}

/// Parse a maps header line: `start-end perms offset maj:min inode   name`.
fn parse_maps_line(line: &str) -> std::result::Result<SmapsVma, String> {
    let mut it = line.splitn(6, ' ');
    let range = it.next().ok_or("range missing")?;
    let perms = it.next().ok_or("perms missing")?;
    let offset = it.next().ok_or("offset missing")?;
    let dev = it.next().ok_or("dev missing")?;
    let inode = it.next().ok_or("inode missing")?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-').ok_or("bad range")?;
    let (maj, min) = dev.split_once(':').ok_or("bad dev")?;
    let hx = |v: &str| u64::from_str_radix(v, 16).map_err(|e| format!("{v}: {e}"));
    Ok(SmapsVma {
        start: hx(s)?,
        end: hx(e)?,
        perms: perms.to_string(),
        offset: hx(offset)?,
        dev: (hx(maj)? as u32, hx(min)? as u32),
        inode: inode.parse().map_err(|e| format!("inode: {e}"))?,
        name,
        vm_flags: String::new(),
    })
}

/// Parse `/proc/PID/smaps` (or `maps`, which simply has no VmFlags).
///
/// Errors: a description of the malformed line.
pub fn parse_smaps(text: &str) -> std::result::Result<Vec<SmapsVma>, String> {
    let mut out: Vec<SmapsVma> = Vec::new();
    for line in text.lines() {
        smaps_line(&mut out, line)?;
    }
    Ok(out)
}

/// Take one line of smaps (or maps) into `out`.
fn smaps_line(out: &mut Vec<SmapsVma>, line: &str) -> std::result::Result<(), String> {
    let first = line.split(' ').next().unwrap_or("");
    if first.contains('-') && !first.ends_with(':') {
        out.push(parse_maps_line(line).map_err(|e| format!("{line:?}: {e}"))?);
    } else if let Some(flags) = line.strip_prefix("VmFlags:") {
        if let Some(v) = out.last_mut() {
            v.vm_flags = flags.trim().to_string();
        }
    }
    Ok(())
}

/// Read and parse a smaps or maps file line by line: smaps is about a
/// kilobyte per mapping, so it is never held whole.
///
/// Errors: read or parse errors naming the path.
fn read_smaps_file(p: &Path) -> Result<Vec<SmapsVma>> {
    use std::io::BufRead;
    let f = std::fs::File::open(p).map_err(|e| Error::proc(p, e))?;
    let mut r = std::io::BufReader::with_capacity(64 * 1024, f);
    let mut out = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| Error::proc(p, e))? == 0 {
            break;
        }
        smaps_line(&mut out, line.trim_end_matches('\n')).map_err(|d| Error::parse(p, d))?;
    }
    Ok(out)
}

/// Read and parse `/proc/PID/smaps`.
///
/// Errors: read or parse errors naming the path.
pub fn read_smaps(pid: i32) -> Result<Vec<SmapsVma>> {
    read_smaps_file(&path(pid, "smaps"))
}

/// Read and parse `/proc/PID/maps`.
///
/// Errors: read or parse errors naming the path.
pub fn read_maps(pid: i32) -> Result<Vec<SmapsVma>> {
    read_smaps_file(&path(pid, "maps"))
}

/// Fields of `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    /// File offset.
    pub pos: u64,
    /// Open flags in octal as printed (includes `O_CLOEXEC` when set).
    pub flags: u32,
    /// Mount ID.
    pub mnt_id: i32,
    /// Inode number.
    pub ino: u64,
    /// The `lock:` lines: locks held through this description (flock,
    /// OFD, leases) and POSIX locks of this process on its inode; blocked
    /// waiters (`->`) are left out.
    pub locks: Vec<LockInfo>,
}

/// One lock as `/proc/locks` and the `lock:` lines of fdinfo print it
/// (see proc(5), /proc/locks): `1: POSIX  ADVISORY  WRITE 1234 00:2d:5678 0 EOF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// `POSIX`, `FLOCK`, `OFDLCK`, `LEASE`, `DELEG`.
    pub class: String,
    /// `ADVISORY`, `MANDATORY`, or for leases `ACTIVE`, `BREAKING`, `BREAKER`.
    pub mode: String,
    /// `READ`, `WRITE` or `UNLCK`.
    pub access: String,
    /// Owning process (for flock and OFD locks: the one that took it).
    pub pid: i32,
    /// First byte.
    pub start: u64,
    /// Last byte, `None` for "to end of file".
    pub end: Option<u64>,
}

/// Parse the text after `lock:` (or a line of /proc/locks); `None` for a
/// blocked waiter (`->`) or a malformed line.
pub fn parse_lock(v: &str) -> Option<LockInfo> {
    let mut w = v.split_whitespace();
    w.next()?; // "1:"
    let class = w.next()?;
    if class == "->" {
        return None;
    }
    let mode = w.next()?;
    let access = w.next()?;
    let pid = w.next()?.parse().ok()?;
    let _dev_ino = w.next()?;
    let start = w.next()?.parse().ok()?;
    let end = match w.next()? {
        "EOF" => None,
        n => Some(n.parse().ok()?),
    };
    Some(LockInfo {
        class: class.to_string(),
        mode: mode.to_string(),
        access: access.to_string(),
        pid,
        start,
        end,
    })
}

/// Parse `/proc/PID/fdinfo/FD`.
///
/// Errors: a description of the malformed line.
pub fn parse_fdinfo(text: &str) -> std::result::Result<FdInfo, String> {
    let mut f = FdInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => f.pos = v.parse().map_err(|e| format!("pos: {e}"))?,
            "flags" => f.flags = u32::from_str_radix(v, 8).map_err(|e| format!("flags: {e}"))?,
            "mnt_id" => f.mnt_id = v.parse().map_err(|e| format!("mnt_id: {e}"))?,
            "ino" => f.ino = v.parse().map_err(|e| format!("ino: {e}"))?,
            "lock" if !v.contains("->") => {
                f.locks
                    .push(parse_lock(v).ok_or_else(|| format!("lock: {v:?} not understood"))?);
            }
            _ => {}
        }
    }
    Ok(f)
}

/// One POSIX timer from `/proc/PID/timers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerInfo {
    /// Timer ID.
    pub id: i32,
    /// Signal number.
    pub signo: i32,
    /// `sigev_value`.
    pub sigval: u64,
    /// `signal`, `thread`, `none` (with `/tid` or `/pid` suffix in the file).
    pub notify: String,
    /// Target thread or process for the notification.
    pub notify_pid: i32,
    /// Clock ID.
    pub clock: i32,
}

/// Parse `/proc/PID/timers`: blocks of `ID:`, `signal: N/VAL`,
/// `notify: KIND/pid.N` (or `tid.N`), `ClockID: N`.
///
/// Errors: a description of the malformed line.
pub fn parse_timers(text: &str) -> std::result::Result<Vec<TimerInfo>, String> {
    let mut out: Vec<TimerInfo> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "ID" => out.push(TimerInfo {
                id: v.parse().map_err(|e| format!("ID: {e}"))?,
                ..Default::default()
            }),
            "signal" => {
                let t = out.last_mut().ok_or("signal before ID")?;
                let (n, val) = v.split_once('/').ok_or("signal: no '/'")?;
                t.signo = n.parse().map_err(|e| format!("signal: {e}"))?;
                t.sigval = u64::from_str_radix(val, 16).map_err(|e| format!("signal: {e}"))?;
            }
            "notify" => {
                let t = out.last_mut().ok_or("notify before ID")?;
                let (kind, who) = v.split_once('/').ok_or("notify: no '/'")?;
                t.notify = kind.to_string();
                let num = who.rsplit('.').next().unwrap_or("0");
                t.notify_pid = num.parse().map_err(|e| format!("notify: {e}"))?;
            }
            "ClockID" => {
                let t = out.last_mut().ok_or("ClockID before ID")?;
                t.clock = v.parse().map_err(|e| format!("ClockID: {e}"))?;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Parse the binary auxiliary vector (`/proc/PID/auxv`): native-endian
/// u64 words, pairs ending at `AT_NULL`.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let mut words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if let Some(end) = words.chunks(2).position(|p| p[0] == 0) {
        words.truncate(end * 2 + 2);
    }
    if words.len() % 2 == 1 {
        words.push(0);
    }
    words
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let t = "1234 (a b) c)) S 1 1234 1234 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 5 10 20 \
                 18446744073709551615 4194304 4198400 140736000000000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 \
                 6000000 6000100 7000000 140736000001000 140736000001100 140736000001200 140736000001300 0\n";
        let s = parse_stat(t).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.flags, 4194304);
        assert_eq!(s.flags & PF_EXITING, 0);
        assert_eq!(s.start_code, 4194304);
        assert_eq!(s.end_code, 4198400);
        assert_eq!(s.start_data, 6000000);
        assert_eq!(s.env_end, 140736000001300);
    }

    #[test]
    fn status_fields() {
        let t = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTracerPid:\t0\n\
                 Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 24 \n\
                 Threads:\t1\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                 CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
                 NoNewPrivs:\t1\nSeccomp:\t0\n";
        let s = parse_status(t).unwrap();
        assert_eq!(s.uids, [1000; 4]);
        assert_eq!(s.groups, vec![4, 24]);
        assert_eq!(s.umask, 0o22);
        assert_eq!(s.cap_prm, 0x1ffffffffff);
        assert!(s.no_new_privs);
    }

    #[test]
    fn smaps_entries() {
        let t = "55d0c0a00000-55d0c0a02000 r-xp 00002000 fd:01 1234   /usr/bin/sleep\n\
                 Size:                  8 kB\nVmFlags: rd ex mr mw me sd\n\
                 7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
                 VmFlags: rd wr mr mw me gd ac\n\
                 7f0000000000-7f0000001000 rw-s 00000000 00:01 99   /dev/zero (deleted)\n";
        let v = parse_smaps(t).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].name, "/usr/bin/sleep");
        assert_eq!(v[0].offset, 0x2000);
        assert_eq!(v[0].dev, (0xfd, 1));
        assert!(v[0].exec() && !v[0].write());
        assert!(v[1].has_flag("gd"));
        assert_eq!(v[1].name, "[stack]");
        assert!(v[2].shared());
        assert_eq!(v[2].name, "/dev/zero (deleted)");
    }

    #[test]
    fn timers_blocks() {
        let t = "ID: 0\nsignal: 34/00000000deadbeef\nnotify: signal/pid.77\nClockID: 1\n\
                 ID: 3\nsignal: 14/0000000000000000\nnotify: thread/tid.78\nClockID: 0\n";
        let v = parse_timers(t).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].signo, 34);
        assert_eq!(v[0].sigval, 0xdeadbeef);
        assert_eq!(v[0].notify, "signal");
        assert_eq!(v[1].notify_pid, 78);
        assert_eq!(v[1].clock, 0);
    }

    #[test]
    fn fdinfo_fields() {
        let f = parse_fdinfo("pos:\t1234\nflags:\t02102001\nmnt_id:\t25\nino:\t77\n").unwrap();
        assert_eq!(f.pos, 1234);
        assert_eq!(f.flags, 0o2102001);
        assert_eq!(f.ino, 77);
        assert!(f.locks.is_empty());
    }

    #[test]
    fn fdinfo_locks() {
        let f = parse_fdinfo(
            "pos:\t0\nflags:\t02\nlock:\t1: POSIX  ADVISORY  WRITE 1234 00:2d:5678 10 19\n\
             lock:\t2: FLOCK  ADVISORY  READ 99 00:2d:5678 0 EOF\n\
             lock:\t3: -> POSIX  ADVISORY  WRITE 77 00:2d:5678 0 EOF\n",
        )
        .unwrap();
        assert_eq!(f.locks.len(), 2);
        assert_eq!(
            f.locks[0],
            LockInfo {
                class: "POSIX".into(),
                mode: "ADVISORY".into(),
                access: "WRITE".into(),
                pid: 1234,
                start: 10,
                end: Some(19),
            }
        );
        assert_eq!(f.locks[1].class, "FLOCK");
        assert_eq!(f.locks[1].end, None);
        assert!(parse_fdinfo("lock:\t1: POSIX\n").is_err());
    }

    #[test]
    fn auxv_ends_at_null() {
        let mut b = Vec::new();
        for w in [33u64, 0x7fff0000, 6, 4096, 0, 0, 99, 99] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&b), vec![33, 0x7fff0000, 6, 4096, 0, 0]);
    }
}
