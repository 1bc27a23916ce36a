//! Terminals: pseudo-terminal pairs inside the dumped tree and the
//! caller's terminal of a shell job (see pty(7), ioctl_tty(2), credentials(7)
//! "Sessions and process groups").
//!
//! **A pair inside the tree.** The master (`/dev/ptmx`) and each slave
//! description (`/dev/pts/N`) are entries of the file table; the pair's
//! state is stored once, on the master: the line settings (`TCGETS`, which
//! on a master reads the slave's), locked settings, window size, packet
//! mode, whether the slave is still locked (`TIOCGPTLCK`), the session the
//! slave is the controlling terminal of and its foreground process group
//! (`TIOCGSID`, `TIOCGPGRP` through the master), and the data queued in
//! both directions. Terminal queues cannot be peeked: they are read out
//! (output through the master; input through a slave criu opens itself
//! with `TIOCGPTPEER`, switched to non-canonical mode for the read so a
//! partial line comes out too) as the last step of the dump, and written
//! back when the tree keeps running (`-R`, `-s`) or the dump fails.
//!
//! **Restore** makes the pair in criu: `/dev/ptmx` is opened until the
//! kernel hands out the dumped number (lower free numbers are held by
//! fillers, closed afterwards); when that number is taken the pair gets
//! another one, which the slave's `/proc/PID/fd` link then shows. The
//! slave is unlocked, criu keeps a slave of its own (`TIOCGPTPEER`) for the
//! whole restore, and the queues are refilled with input processing, echo
//! and output processing switched off so the bytes are not processed
//! twice; then the dumped settings, window size and packet mode are set.
//! Each slave description of the tree is a new `TIOCGPTPEER` open. A
//! session leader whose controlling terminal the slave was gets it back by
//! an injected `ioctl(fd, TIOCSCTTY, 0)` and its foreground group by
//! `TIOCSPGRP`, once its descriptors are in place. A pair that was locked is
//! locked again after every slave is open.
//!
//! **Shell job** (`--shell-job`): a terminal whose other side is outside
//! the tree (the shell's terminal). Without `--shell-job` the dump refuses
//! it, as upstream criu does. With it, the description is stored as the
//! caller's terminal with its line settings, and restore reopens criu's own
//! terminal (the first of its descriptors 0, 1, 2 that is one), sets the
//! dumped line settings on it (not the window size: the terminal's own is
//! the truth) and, when the dumped job was the terminal's foreground
//! process group, makes its group the foreground again (`tcsetpgrp`).
//!
//! Not restored: pending packet-mode status changes (dropped), a master
//! whose slave is not open in the tree gets no input queue back and reads
//! EIO after restore (as after a slave hang-up); `/dev/tty` opened inside a
//! pty session (it is reopened as criu's `/dev/tty`).

use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::images::types::{FdEntry, FileEntry, FileKind, PstreeEntry};
use crate::remote::Remote;
use crate::sys::{self, KernelTermios};
use crate::{info, warn};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Majors of Unix98 pty slaves (see the kernel's
/// Documentation/admin-guide/devices.txt): index = (major - 136) * 256 +
/// minor.
const PTS_MAJORS: std::ops::RangeInclusive<u64> = 136..=143;

/// Most bytes stored per queue (a pty buffers far less).
const QUEUE_LIMIT: usize = 1 << 20;

/// Most filler masters opened to get a pair its dumped number back.
const MAX_FILLERS: usize = 1024;

/// Line settings (the kernel's `struct termios`, see termios(3)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Termios {
    /// Input modes (`c_iflag`).
    pub iflag: u32,
    /// Output modes (`c_oflag`).
    pub oflag: u32,
    /// Control modes, with the speed (`c_cflag`).
    pub cflag: u32,
    /// Local modes (`c_lflag`).
    pub lflag: u32,
    /// Line discipline (`c_line`, 0 is N_TTY).
    pub line: u8,
    /// Control characters (`c_cc`, 19 of them).
    pub cc: Vec<u8>,
}

impl From<KernelTermios> for Termios {
    fn from(k: KernelTermios) -> Self {
        Termios {
            iflag: k.iflag,
            oflag: k.oflag,
            cflag: k.cflag,
            lflag: k.lflag,
            line: k.line,
            cc: k.cc.to_vec(),
        }
    }
}

impl Termios {
    /// As the kernel takes it (missing control characters are 0,
    /// disabled).
    pub fn to_kernel(&self) -> KernelTermios {
        let mut cc = [0u8; 19];
        for (d, s) in cc.iter_mut().zip(&self.cc) {
            *d = *s;
        }
        KernelTermios {
            iflag: self.iflag,
            oflag: self.oflag,
            cflag: self.cflag,
            lflag: self.lflag,
            line: self.line,
            cc,
        }
    }
}

/// The state of a pseudo-terminal pair, stored on its master.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PtyState {
    /// The pair's line settings (the slave's).
    pub termios: Termios,
    /// Locked settings (`TIOCGLCKTRMIOS`; all zero when none is locked).
    pub locked_termios: Termios,
    /// Window size: rows, columns, x pixels, y pixels (`TIOCGWINSZ`).
    pub winsize: [u16; 4],
    /// Packet mode is on (`TIOCGPKT`, see ioctl_tty(2)).
    pub packet_mode: bool,
    /// The slave is locked (`TIOCGPTLCK`: unlockpt(3) not called).
    pub locked: bool,
    /// The session whose controlling terminal the slave is, 0 when none.
    pub session: i32,
    /// Its foreground process group, 0 when none.
    pub fg_pgrp: i32,
    /// Bytes written to the master, not yet read from the slave (after
    /// input processing: what the slave's reader would get).
    pub input: Vec<u8>,
    /// Bytes written to the slave, not yet read from the master (after
    /// output processing).
    pub output: Vec<u8>,
}

/// An open file description of a terminal.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum TtyEntry {
    /// The master side of pseudo-terminal pair `index` (`/dev/ptmx`).
    Master {
        /// The pair's number at dump (its slave was `/dev/pts/<index>`).
        index: u32,
        /// Open flags (see open(2)), without `O_CLOEXEC`.
        flags: u32,
        /// The pair's state.
        state: PtyState,
    },
    /// A slave (`/dev/pts/<index>`) of a pair whose master is in the tree.
    Slave {
        /// The pair's number at dump.
        index: u32,
        /// Open flags.
        flags: u32,
    },
    /// The caller's terminal of a shell job (`--shell-job`): reopened at
    /// restore as criu's own terminal.
    Shell {
        /// What it was at dump, e.g. `/dev/pts/3`.
        path: String,
        /// Open flags.
        flags: u32,
        /// Line settings at dump.
        termios: Termios,
        /// The dumped tree's root process group was the terminal's
        /// foreground group.
        foreground: bool,
    },
}

impl TtyEntry {
    /// One line for `criu show`: what it is and its state.
    pub fn describe(&self) -> String {
        match self {
            TtyEntry::Master { index, state, .. } => {
                let mut s = format!(
                    "pty master of /dev/pts/{index}, {}x{}, {} bytes input and {} bytes output queued",
                    state.winsize[1],
                    state.winsize[0],
                    state.input.len(),
                    state.output.len()
                );
                if state.session != 0 {
                    s += &format!(
                        ", controlling terminal of session {} (foreground group {})",
                        state.session, state.fg_pgrp
                    );
                }
                if state.packet_mode {
                    s += ", packet mode";
                }
                if state.locked {
                    s += ", locked";
                }
                s += &format!(", {}", termios_summary(&state.termios));
                s
            }
            TtyEntry::Slave { index, .. } => format!("pty slave /dev/pts/{index}"),
            TtyEntry::Shell {
                path,
                termios,
                foreground,
                ..
            } => format!(
                "shell job terminal {path} (criu's terminal at restore){}, {}",
                if *foreground { ", foreground" } else { "" },
                termios_summary(termios)
            ),
        }
    }

    /// Open flags of the description.
    pub fn flags(&self) -> u32 {
        match self {
            TtyEntry::Master { flags, .. }
            | TtyEntry::Slave { flags, .. }
            | TtyEntry::Shell { flags, .. } => *flags,
        }
    }

    fn index(&self) -> Option<u32> {
        match self {
            TtyEntry::Master { index, .. } | TtyEntry::Slave { index, .. } => Some(*index),
            TtyEntry::Shell { .. } => None,
        }
    }
}

fn termios_summary(t: &Termios) -> String {
    let l = t.lflag;
    let on = |bit: libc::tcflag_t, name: &str| {
        if l & bit != 0 {
            name.to_string()
        } else {
            format!("-{name}")
        }
    };
    [
        on(libc::ICANON, "icanon"),
        on(libc::ECHO, "echo"),
        on(libc::ISIG, "isig"),
    ]
    .join(" ")
}

fn tty_of(k: &FileKind) -> Option<&TtyEntry> {
    match k {
        FileKind::Tty(t) => Some(t),
        _ => None,
    }
}

/// Whether a `/proc/PID/fd` link names a terminal this module dumps.
pub fn is_terminal(link: &str) -> bool {
    link == "/dev/ptmx"
        || link == "/dev/pts/ptmx"
        || (link.starts_with("/dev/pts/") && !link.ends_with(" (deleted)"))
        || (link.starts_with("/dev/tty") && link != "/dev/tty")
        || link == "/dev/console"
}

/// A slave seen during collection, kept until the whole tree is known.
struct SlaveSeen {
    id: u32,
    pid: i32,
    fd: i32,
    path: String,
    flags: u32,
    termios: Termios,
}

/// Dump side: classifies terminal descriptors as they are collected and,
/// once every process is, pairs slaves with masters, checks sessions and
/// reads the queues ([`Collector::finish`]).
#[derive(Default)]
pub struct Collector {
    slaves: Vec<SlaveSeen>,
    /// criu's duplicate of each master, by table id.
    masters: Vec<(u32, OwnedFd)>,
    /// (pid, fd, id) of every descriptor on a terminal.
    fds: Vec<(i32, i32, u32)>,
}

impl Collector {
    /// Classify descriptor `fd` of `pid` (link `link`, open `flags`,
    /// criu's duplicate `dup`), which becomes table entry `id`.
    ///
    /// Errors: a terminal that is not a pty when not `shell_job` (naming
    /// pid, fd and the terminal, with the hint), a hung-up terminal, failed
    /// ioctls.
    #[allow(clippy::too_many_arguments)]
    pub fn classify(
        &mut self,
        id: u32,
        pid: i32,
        fd: i32,
        link: &str,
        flags: u32,
        dup: OwnedFd,
        shell_job: bool,
    ) -> Result<FileKind> {
        let fail = |what: &str, e: std::io::Error| {
            Error::Unsupported(format!("pid {pid} fd {fd} ({link}): {what}: {e}"))
        };
        let md = nix::sys::stat::fstat(dup.as_raw_fd()).map_err(|e| fail("fstat", e.into()))?;
        let rdev = md.st_rdev;
        let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
        if (major, minor) == (5, 2) {
            let index = sys::tty_get_int(&dup, libc::TIOCGPTN).map_err(|e| fail("TIOCGPTN", e))?;
            let state = read_state(&dup).map_err(|e| fail("reading the pty state", e))?;
            self.masters.push((id, dup));
            return Ok(FileKind::Tty(TtyEntry::Master {
                index: index as u32,
                flags,
                state,
            }));
        }
        let termios = match sys::tty_get_termios(&dup, false) {
            Ok(t) => Termios::from(t),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                return Err(Error::Unsupported(format!(
                    "pid {pid} fd {fd}: the terminal {link} was hung up; close it in the process before dumping"
                )))
            }
            Err(e) => return Err(fail("TCGETS", e)),
        };
        if PTS_MAJORS.contains(&major) {
            let index = ((major - 136) * 256 + minor) as u32;
            self.slaves.push(SlaveSeen {
                id,
                pid,
                fd,
                path: link.to_string(),
                flags,
                termios,
            });
            return Ok(FileKind::Tty(TtyEntry::Slave { index, flags }));
        }
        if !shell_job {
            return Err(dangling(pid, fd, link));
        }
        Ok(FileKind::Tty(TtyEntry::Shell {
            path: link.to_string(),
            flags,
            termios,
            foreground: false,
        }))
    }

    /// Note that descriptor `fd` of `pid` refers to table entry `id` (for
    /// every descriptor, also repeated ones).
    pub fn note(&mut self, pid: i32, fd: i32, id: u32, kind: &FileKind) {
        if tty_of(kind).is_some() {
            self.fds.push((pid, fd, id));
        }
    }

    /// After every process is collected: a slave whose master is not in
    /// the tree becomes the shell job's terminal (or is refused without
    /// `shell_job`); each pair's session must have its leader in the tree,
    /// with a descriptor on the pair; then the queues are read out. `tree`
    /// is the pstree, root first.
    ///
    /// Errors: [`Error::Unsupported`] / [`Error::Refused`] naming pid, fd
    /// and terminal; reading a queue failed.
    pub fn finish(
        &mut self,
        entries: &mut [FileEntry],
        tree: &[PstreeEntry],
        shell_job: bool,
    ) -> Result<Queues> {
        let master_of = |entries: &[FileEntry], index: u32| {
            entries.iter().position(|e| {
                matches!(&e.kind, FileKind::Tty(TtyEntry::Master { index: i, .. }) if *i == index)
            })
        };
        for s in &self.slaves {
            let Some(FileKind::Tty(TtyEntry::Slave { index, .. })) =
                entries.get(s.id as usize).map(|e| &e.kind)
            else {
                continue;
            };
            if master_of(entries, *index).is_some() {
                continue;
            }
            if !shell_job {
                return Err(dangling(s.pid, s.fd, &s.path));
            }
            entries[s.id as usize].kind = FileKind::Tty(TtyEntry::Shell {
                path: s.path.clone(),
                flags: s.flags,
                termios: s.termios.clone(),
                foreground: false,
            });
        }
        let has_shell = entries
            .iter()
            .any(|e| matches!(e.kind, FileKind::Tty(TtyEntry::Shell { .. })));
        if let (true, Some(root)) = (has_shell, tree.first()) {
            let st = crate::proc::read_stat(root.pid)?;
            let fg = st.tpgid > 0 && st.tpgid == root.pgid;
            for e in entries.iter_mut() {
                if let FileKind::Tty(TtyEntry::Shell { foreground, .. }) = &mut e.kind {
                    *foreground = fg;
                }
            }
            if root.sid == root.pid {
                warn!(
                    "pid {}: a session leader on the caller's terminal; after restore it leads a new session without a controlling terminal",
                    root.pid
                );
            }
        }
        self.check_sessions(entries, tree)?;
        self.read_queues(entries)
    }

    fn check_sessions(&self, entries: &mut [FileEntry], tree: &[PstreeEntry]) -> Result<()> {
        for (id, _) in &self.masters {
            let Some(FileKind::Tty(TtyEntry::Master { index, state, .. })) =
                entries.get_mut(*id as usize).map(|e| &mut e.kind)
            else {
                continue;
            };
            if state.session == 0 {
                continue;
            }
            let index = *index;
            let (pid, fd, _) = self
                .fds
                .iter()
                .find(|f| f.2 == *id)
                .copied()
                .unwrap_or((0, 0, 0));
            let sid = state.session;
            if !tree
                .iter()
                .any(|p| p.pid == sid && p.sid == sid && p.zombie.is_none())
            {
                return Err(Error::Unsupported(format!(
                    "pid {pid} fd {fd}: the pseudo-terminal /dev/pts/{index} is the controlling terminal of session {sid}, whose leader is not in the dumped tree (dump the tree from the session leader)"
                )));
            }
            let leader_has_fd = self.fds.iter().any(|&(p, _, fid)| {
                p == sid
                    && entries
                        .get(fid as usize)
                        .and_then(|e| tty_of(&e.kind))
                        .and_then(TtyEntry::index)
                        == Some(index)
            });
            if !leader_has_fd {
                return Err(Error::Unsupported(format!(
                    "pid {sid}: its controlling terminal /dev/pts/{index} is open in none of its descriptors; that cannot be restored (keep a descriptor on it open)"
                )));
            }
            let Some(FileKind::Tty(TtyEntry::Master { state, .. })) =
                entries.get_mut(*id as usize).map(|e| &mut e.kind)
            else {
                continue;
            };
            let fg = state.fg_pgrp;
            if fg != 0 && !tree.iter().any(|p| p.pgid == fg && p.sid == sid) {
                info!("/dev/pts/{index}: foreground group {fg} is not in the tree; not restored");
                state.fg_pgrp = 0;
            }
        }
        Ok(())
    }

    fn read_queues(&mut self, entries: &mut [FileEntry]) -> Result<Queues> {
        let mut q = Queues::default();
        for (id, master) in std::mem::take(&mut self.masters) {
            if let Err(e) = self.read_one(entries, id, master, &mut q) {
                q.put_back();
                return Err(e);
            }
        }
        Ok(q)
    }

    /// Read the queues of the pair whose master is entry `id`, adding them
    /// to `q`.
    fn read_one(
        &self,
        entries: &mut [FileEntry],
        id: u32,
        master: OwnedFd,
        q: &mut Queues,
    ) -> Result<()> {
        {
            let Some(FileKind::Tty(TtyEntry::Master { index, .. })) =
                entries.get(id as usize).map(|e| &e.kind)
            else {
                return Ok(());
            };
            let index = *index;
            let has_slave = self.fds.iter().any(|&(_, _, fid)| {
                matches!(
                    entries.get(fid as usize).map(|e| &e.kind),
                    Some(FileKind::Tty(TtyEntry::Slave { index: i, .. })) if *i == index
                )
            });
            let Some(FileKind::Tty(TtyEntry::Master { state, .. })) =
                entries.get_mut(id as usize).map(|e| &mut e.kind)
            else {
                return Ok(());
            };
            let fail = |what: &str, e: std::io::Error| {
                Error::Unsupported(format!("pty /dev/pts/{index}: {what}: {e}"))
            };
            if !has_slave {
                info!("pty /dev/pts/{index}: no slave in the tree; its queues are not read");
                return Ok(());
            }
            let slave = sys::tty_open_peer(
                &master,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
            .map_err(|e| fail("opening a slave to read the input queue", e))?;
            let packet = state.packet_mode;
            let output = with_nonblock(&master, || drain(&master, packet))
                .map_err(|e| fail("reading the output queue", e))?;
            let t = state.termios.to_kernel();
            let mut raw = t;
            raw.lflag &= !libc::ICANON;
            raw.cc[libc::VMIN] = 0;
            raw.cc[libc::VTIME] = 0;
            let input =
                sys::tty_set_termios(&slave, &raw, false).and_then(|()| drain(&slave, false));
            // The dumped settings back whatever happened.
            let back = sys::tty_set_termios(&slave, &t, false);
            let input = input.map_err(|e| fail("reading the input queue", e))?;
            back.map_err(|e| fail("TCSETS", e))?;
            info!(
                "pty /dev/pts/{index}: {} bytes of input and {} bytes of output queued",
                input.len(),
                output.len()
            );
            state.input = input.clone();
            state.output = output.clone();
            q.pairs.push(Queued {
                index,
                master,
                slave,
                termios: t,
                input,
                output,
            });
        }
        Ok(())
    }
}

fn dangling(pid: i32, fd: i32, link: &str) -> Error {
    Error::Refused(format!(
        "pid {pid} fd {fd} is on the terminal {link}, whose other side is not in the dumped tree: the task is attached to a shell's terminal; dump it with --shell-job (-j) and restore it with -j from a terminal"
    ))
}

/// The pair state readable through the master (queues excepted).
fn read_state(m: &OwnedFd) -> std::io::Result<PtyState> {
    let termios = sys::tty_get_termios(m, false)?.into();
    let locked_termios = sys::tty_get_termios(m, true)?.into();
    let winsize = sys::tty_get_winsize(m)?;
    let packet_mode = sys::tty_get_int(m, libc::TIOCGPKT)? != 0;
    let locked = sys::tty_get_int(m, libc::TIOCGPTLCK)? != 0;
    // ENOTTY: not the controlling terminal of any session / no group.
    let session = sys::tty_get_int(m, libc::TIOCGSID).unwrap_or(0);
    let fg_pgrp = if session != 0 {
        sys::tty_get_int(m, libc::TIOCGPGRP).unwrap_or(0)
    } else {
        0
    };
    Ok(PtyState {
        termios,
        locked_termios,
        winsize,
        packet_mode,
        locked,
        session,
        fg_pgrp,
        input: Vec::new(),
        output: Vec::new(),
    })
}

/// Run `f` with `O_NONBLOCK` set on `fd`'s description, then put its
/// flags back.
fn with_nonblock<T>(fd: &OwnedFd, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let was = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
    let was = OFlag::from_bits_retain(was);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(was | OFlag::O_NONBLOCK))?;
    let r = f();
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(was))?;
    r
}

/// Read a non-blocking terminal until it has nothing more; in packet mode
/// each read's leading status byte is dropped (and status-only packets).
fn drain(fd: &OwnedFd, packet: bool) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) if packet => {
                if buf[0] == 0 {
                    out.extend_from_slice(&buf[1..n]);
                } else {
                    info!("dropped a packet-mode status change {:#x}", buf[0]);
                }
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EAGAIN) | Err(Errno::EIO) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if out.len() > QUEUE_LIMIT {
            return Err(std::io::Error::other(format!(
                "more than {QUEUE_LIMIT} bytes queued"
            )));
        }
    }
    Ok(out)
}

/// Put queued bytes into a pair: `output` through the slave (to be read
/// from the master), `input` through the master (to be read from the
/// slave), with output processing, input processing, echo and signals off
/// so that bytes already processed once are not processed again; then
/// `final_t`. `master` must be non-blocking (or have room).
///
/// Errors: an ioctl or write failed, or the pair had no room.
fn refill(
    master: &OwnedFd,
    slave: &OwnedFd,
    final_t: &KernelTermios,
    input: &[u8],
    output: &[u8],
) -> std::io::Result<()> {
    if !input.is_empty() || !output.is_empty() {
        let mut t = *final_t;
        t.oflag &= !libc::OPOST;
        t.iflag &= !(libc::ICRNL
            | libc::INLCR
            | libc::IGNCR
            | libc::ISTRIP
            | libc::IUCLC
            | libc::IXON
            | libc::IXOFF
            | libc::PARMRK);
        t.lflag &= !(libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN);
        for c in [
            libc::VERASE,
            libc::VKILL,
            libc::VEOF,
            libc::VEOL,
            libc::VEOL2,
        ] {
            t.cc[c] = 0;
        }
        sys::tty_set_termios(slave, &t, false)?;
        write_all(slave, output)?;
        write_all(master, input)?;
        // poll(2) on the slave makes the kernel process the input queued
        // so far (n_tty flushes its receive work when polled), under the
        // settings above.
        sys::poll_in_now(slave);
    }
    sys::tty_set_termios(slave, final_t, false)
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                return Err(std::io::Error::other(format!(
                    "no room for {} more queued bytes",
                    data.len()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One pair's queues as read at dump, with what is needed to put them
/// back.
struct Queued {
    index: u32,
    master: OwnedFd,
    slave: OwnedFd,
    termios: KernelTermios,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// The queues read out by [`Collector::finish`].
#[derive(Default)]
pub struct Queues {
    pairs: Vec<Queued>,
}

impl Queues {
    /// Write every queue back into its pair (the tree keeps running, or
    /// the dump failed). Failures are logged: a terminal never guaranteed
    /// delivery, and the tree must be let go anyway.
    pub fn put_back(self) {
        for q in self.pairs {
            let r = with_nonblock(&q.master, || {
                refill(&q.master, &q.slave, &q.termios, &q.input, &q.output)
            });
            match r {
                Ok(()) => info!("pty /dev/pts/{}: queues written back", q.index),
                Err(e) => crate::error!(
                    "pty /dev/pts/{}: writing its queues back failed: {e}",
                    q.index
                ),
            }
        }
    }
}

/// Restore-time check before anything is created: a shell job's terminal
/// needs `--shell-job` and a terminal among criu's descriptors 0 to 2.
///
/// Errors: [`Error::Refused`] saying what to do.
pub fn precheck(table: &[FileEntry], shell_job: bool) -> Result<()> {
    let Some(path) = table.iter().find_map(|e| match &e.kind {
        FileKind::Tty(TtyEntry::Shell { path, .. }) => Some(path),
        _ => None,
    }) else {
        return Ok(());
    };
    if !shell_job {
        return Err(Error::Refused(format!(
            "the images hold a shell job (a task was on the terminal {path}); restore it with --shell-job (-j) from a terminal"
        )));
    }
    own_terminal().map(|_| ())
}

/// The first of criu's descriptors 0, 1, 2 that is a terminal.
fn own_terminal() -> Result<i32> {
    (0..=2)
        .find(|&fd| nix::unistd::isatty(fd).unwrap_or(false))
        .ok_or_else(|| {
            Error::Refused(
                "restoring a shell job needs a terminal: none of criu's standard input, output and error is one".into(),
            )
        })
}

/// A pair made by restore.
struct Pair {
    master: OwnedFd,
    /// criu's own slave, held for the whole restore.
    _slave: OwnedFd,
    /// Lock the slave again at the end.
    relock: bool,
}

/// Restore side: makes terminal descriptions in criu (see the module
/// documentation).
#[derive(Default)]
pub struct Restorer {
    /// By dumped pair number.
    pairs: HashMap<u32, Pair>,
}

impl Restorer {
    /// criu's description for table entry `e` (close-on-exec); `pid` and
    /// `fd` name its first user, for errors.
    ///
    /// Errors: [`Error::Refused`] / [`Error::Unsupported`] naming pid, fd
    /// and what failed.
    pub fn open(
        &mut self,
        table: &[FileEntry],
        e: &TtyEntry,
        pid: i32,
        fd: i32,
    ) -> Result<OwnedFd> {
        let fail = |what: String, err: std::io::Error| {
            Error::Unsupported(format!("pid {pid} fd {fd}: {what}: {err}"))
        };
        match e {
            TtyEntry::Master { index, .. } => {
                let p = self.pair(table, *index, pid, fd)?;
                p.master
                    .try_clone()
                    .map_err(|err| fail("dup of the pty master".into(), err))
            }
            TtyEntry::Slave { index, flags } => {
                let p = self.pair(table, *index, pid, fd)?;
                let fl = reopen_flags(*flags) | libc::O_NOCTTY | libc::O_CLOEXEC;
                sys::tty_open_peer(&p.master, fl)
                    .map_err(|err| fail(format!("opening the slave of pty {index}"), err))
            }
            TtyEntry::Shell {
                path,
                flags,
                termios,
                ..
            } => {
                let own = own_terminal()?;
                let me = format!("/proc/self/fd/{own}");
                let fl = reopen_flags(*flags) | libc::O_NOCTTY | libc::O_CLOEXEC;
                let t = open_flags(&me, fl).map_err(|err| {
                    Error::Refused(format!(
                        "pid {pid} fd {fd} was on the terminal {path}: cannot reopen criu's terminal (fd {own}): {err}"
                    ))
                })?;
                if let Err(err) = sys::tty_set_termios(&t, &termios.to_kernel(), false) {
                    warn!("pid {pid} fd {fd}: could not set the dumped line settings on criu's terminal: {err}");
                }
                Ok(t)
            }
        }
    }

    /// The pair dumped as number `index`, made now if it is not yet.
    fn pair(&mut self, table: &[FileEntry], index: u32, pid: i32, fd: i32) -> Result<&Pair> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.pairs.entry(index) {
            let (flags, state) = table
                .iter()
                .find_map(|e| match &e.kind {
                    FileKind::Tty(TtyEntry::Master {
                        index: i,
                        flags,
                        state,
                    }) if *i == index => Some((*flags, state)),
                    _ => None,
                })
                .ok_or_else(|| {
                    Error::Unsupported(format!(
                        "pid {pid} fd {fd}: pty slave {index} has no master in the images"
                    ))
                })?;
            let p = make_pair(index, flags, state).map_err(|e| {
                Error::Unsupported(format!(
                    "pid {pid} fd {fd}: making pseudo-terminal pair {index}: {e}"
                ))
            })?;
            slot.insert(p);
        }
        Ok(&self.pairs[&index])
    }

    /// After every task has its descriptors: lock the pairs that were
    /// locked.
    ///
    /// Errors: the ioctl failed.
    pub fn finish(&mut self) -> Result<()> {
        for (index, p) in &self.pairs {
            if p.relock {
                sys::tty_set_int(&p.master, libc::TIOCSPTLCK, 1)
                    .map_err(|e| Error::Unsupported(format!("locking pty {index} again: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Open flags replayed on reopening: all but creation ones and
/// `O_CLOEXEC` (criu's own copies are close-on-exec anyway).
fn reopen_flags(dumped: u32) -> i32 {
    dumped as i32 & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC)
}

/// open(2) with raw `flags` (access mode included).
fn open_flags(path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = flags & libc::O_ACCMODE;
    std::fs::OpenOptions::new()
        .read(mode == libc::O_RDONLY || mode == libc::O_RDWR)
        .write(mode == libc::O_WRONLY || mode == libc::O_RDWR)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open(path)
        .map(OwnedFd::from)
}

/// Open `/dev/ptmx` until the kernel hands out number `index` (holding
/// the lower numbers it gives meanwhile), or a higher one (`index` is
/// taken), or too many tries: the master and its number.
fn open_ptmx_near(index: u32, flags: i32) -> std::io::Result<(OwnedFd, u32)> {
    let mut fillers = Vec::new();
    loop {
        let m = open_flags(
            "/dev/ptmx",
            flags | libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )?;
        let n = sys::tty_get_int(&m, libc::TIOCGPTN)? as u32;
        if n >= index || fillers.len() >= MAX_FILLERS {
            return Ok((m, n));
        }
        fillers.push(m);
    }
}

fn make_pair(index: u32, flags: u32, state: &PtyState) -> std::io::Result<Pair> {
    let fl = reopen_flags(flags) & !libc::O_ACCMODE;
    let (master, got) = open_ptmx_near(index, fl)?;
    if got != index {
        info!("pty {index}: /dev/pts/{index} is taken; restored as /dev/pts/{got}");
    }
    sys::tty_set_int(&master, libc::TIOCSPTLCK, 0)?;
    let slave = sys::tty_open_peer(
        &master,
        libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
    )?;
    let t = state.termios.to_kernel();
    with_nonblock(&master, || {
        refill(&master, &slave, &t, &state.input, &state.output)
    })?;
    if state.locked_termios.to_kernel() != KernelTermios::default() {
        sys::tty_set_termios(&master, &state.locked_termios.to_kernel(), true)?;
    }
    sys::tty_set_winsize(&master, state.winsize)?;
    if state.packet_mode {
        sys::tty_set_int(&master, libc::TIOCPKT, 1)?;
    }
    info!(
        "pty {index}: made (/dev/pts/{got}), {} bytes input and {} bytes output queued again",
        state.input.len(),
        state.output.len()
    );
    Ok(Pair {
        master,
        _slave: slave,
        relock: state.locked,
    })
}

/// Whether session `sid` has a pseudo-terminal of the tree as its
/// controlling terminal (restored by [`restore_ctty`] in its leader).
pub fn session_has_tree_ctty(table: &[FileEntry], sid: i32) -> bool {
    table.iter().any(
        |e| matches!(tty_of(&e.kind), Some(TtyEntry::Master { state, .. }) if state.session == sid),
    )
}

/// In a restored session leader whose controlling terminal was a pty of
/// the tree: once its descriptors are in place, make the pty its
/// controlling terminal again (`ioctl(fd, TIOCSCTTY, 0)`, through any of
/// its descriptors on the pair) and set the foreground process group
/// (`TIOCSPGRP`), see ioctl_tty(2).
///
/// Errors: an injected call failed.
pub fn restore_ctty(
    h: &mut Helper,
    r: &Remote,
    table: &[FileEntry],
    files: &[FdEntry],
    me: &PstreeEntry,
) -> Result<()> {
    if me.sid != me.pid {
        return Ok(());
    }
    for e in table {
        let Some(TtyEntry::Master { index, state, .. }) = tty_of(&e.kind) else {
            continue;
        };
        if state.session != me.pid {
            continue;
        }
        let fd = files.iter().find(|f| {
            table
                .get(f.id as usize)
                .and_then(|e| tty_of(&e.kind))
                .and_then(TtyEntry::index)
                == Some(*index)
        });
        let Some(fd) = fd else {
            return Err(Error::Unsupported(format!(
                "pid {}: no descriptor on its controlling terminal (pty {index})",
                me.pid
            )));
        };
        r.call(
            h,
            &format!("ioctl({}, TIOCSCTTY)", fd.fd),
            libc::SYS_ioctl,
            [fd.fd as u64, libc::TIOCSCTTY, 0, 0, 0, 0],
        )?;
        if state.fg_pgrp > 0 && state.fg_pgrp != me.pgid {
            let p = r.put(h, 0, &state.fg_pgrp.to_le_bytes())?;
            r.call(
                h,
                &format!("ioctl({}, TIOCSPGRP, {})", fd.fd, state.fg_pgrp),
                libc::SYS_ioctl,
                [fd.fd as u64, libc::TIOCSPGRP, p, 0, 0, 0],
            )?;
        }
        info!(
            "pid {}: pty {index} is its controlling terminal again (foreground group {})",
            me.pid, state.fg_pgrp
        );
    }
    Ok(())
}

/// A shell job that was the foreground of its terminal is made the
/// foreground of criu's terminal again (tcsetpgrp(3), with `SIGTTOU`
/// blocked so criu may do it from the background): the root's own group,
/// or criu's when the root joined criu's group.
///
/// Errors: none; a failure is logged (the job then runs in the
/// background, as after `bg`).
pub fn shell_foreground(table: &[FileEntry], root: &PstreeEntry) {
    let fg = table.iter().any(|e| {
        matches!(
            e.kind,
            FileKind::Tty(TtyEntry::Shell {
                foreground: true,
                ..
            })
        )
    });
    if !fg || root.pgid != root.pid {
        return;
    }
    let Ok(own) = own_terminal() else { return };
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old));
    let r = match own {
        0 => nix::unistd::tcsetpgrp(
            std::io::stdin().as_fd(),
            nix::unistd::Pid::from_raw(root.pgid),
        ),
        1 => nix::unistd::tcsetpgrp(
            std::io::stdout().as_fd(),
            nix::unistd::Pid::from_raw(root.pgid),
        ),
        _ => nix::unistd::tcsetpgrp(
            std::io::stderr().as_fd(),
            nix::unistd::Pid::from_raw(root.pgid),
        ),
    };
    match r {
        Ok(()) => info!("process group {} is the terminal's foreground again", root.pgid),
        Err(e) => warn!(
            "could not make process group {} the terminal's foreground ({}); it runs in the background",
            root.pgid,
            e.desc()
        ),
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_links() {
        for l in [
            "/dev/ptmx",
            "/dev/pts/3",
            "/dev/pts/ptmx",
            "/dev/tty1",
            "/dev/console",
        ] {
            assert!(is_terminal(l), "{l}");
        }
        for l in ["/dev/tty", "/dev/null", "pipe:[3]", "/dev/pts/3 (deleted)"] {
            assert!(!is_terminal(l), "{l}");
        }
    }

    #[test]
    fn termios_round_trip() {
        let k = KernelTermios {
            iflag: 1,
            oflag: 2,
            cflag: 3,
            lflag: 4,
            line: 0,
            cc: [7; 19],
        };
        assert_eq!(Termios::from(k).to_kernel(), k);
    }
}
