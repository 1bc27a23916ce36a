//! Open file descriptions of pipes and FIFOs (see pipe(7), fifo(7)).
//!
//! A pipe is one buffer shared by every open file description of it: its
//! two ends from pipe(2), and any description opened later through
//! `/proc/PID/fd/N` or, for a FIFO, through its path. So the buffer's state
//! (size from `F_GETPIPE_SZ`, the bytes still queued) is dumped once per
//! pipe, with the first description of it, and each description records
//! only its own open flags.
//!
//! The queued bytes are read without consuming them: tee(2) duplicates them
//! into a scratch pipe of the same size, which criu then reads. At restore
//! the pipe is created once (pipe2(2), or the FIFO opened by path), resized
//! and refilled, and every further description of it is a new open of
//! `/proc/self/fd/N` (or of the FIFO's path) with the dumped access mode.

use super::{fdinfo_flags, open_path, os_err};
use crate::error::{Error, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// One open file description of a pipe or FIFO.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PipeEntry {
    /// Inode number of the pipe (the `INO` of `pipe:[INO]`, or the FIFO's
    /// inode); descriptions with the same one share a buffer.
    pub ino: u64,
    /// Path of a named FIFO (see mkfifo(3)); `None` for a pipe from pipe(2).
    pub fifo: Option<String>,
    /// Open flags of this description (`O_RDONLY`/`O_WRONLY`/`O_RDWR`,
    /// `O_NONBLOCK`, ...; without `O_CLOEXEC`, see open(2)).
    pub flags: u32,
    /// The buffer, carried by the first description of each pipe dumped.
    pub state: Option<PipeState>,
}

/// The buffer of a pipe.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PipeState {
    /// Capacity in bytes (`F_GETPIPE_SZ`, see fcntl(2), "Changing the
    /// capacity of a pipe").
    pub size: u32,
    /// The bytes queued in it, oldest first (at most `size`).
    pub data: Vec<u8>,
}

impl PipeEntry {
    /// Check an entry read from an image: a FIFO path is absolute, the
    /// queued bytes fit the size.
    ///
    /// Errors: what is wrong, for an image error.
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(p) = &self.fifo {
            if !p.starts_with('/') {
                return Err(format!("FIFO path {p:?} not absolute"));
            }
        }
        if let Some(st) = &self.state {
            if st.size == 0 || st.data.len() as u64 > u64::from(st.size) {
                return Err(format!(
                    "pipe:[{}] holds {} bytes in a buffer of {}",
                    self.ino,
                    st.data.len(),
                    st.size
                ));
            }
        }
        Ok(())
    }
}

fn name(e_ino: u64, fifo: &Option<String>) -> String {
    match fifo {
        Some(p) => format!("FIFO {p}"),
        None => format!("pipe:[{e_ino}]"),
    }
}

fn accmode(flags: u32) -> i32 {
    flags as i32 & libc::O_ACCMODE
}

/// Reopen the pipe `fd` is a description of, through `/proc/self/fd`, with
/// `flags` (see proc(5), `/proc/PID/fd`: opening the link opens the pipe).
fn reopen(fd: BorrowedFd<'_>, flags: i32, what: &str) -> Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    open_path(&path, flags).map_err(|e| os_err(format!("{what}: reopening {path}"), e))
}

/// Dumps pipe descriptions, remembering which pipes' buffers were saved.
#[derive(Debug, Default)]
pub struct PipeDumper {
    seen: HashSet<(u64, u64)>,
}

impl PipeDumper {
    /// A dumper that has seen no pipe yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Dump the description `fd` (criu's duplicate of the task's
    /// descriptor) whose `/proc/PID/fd` link is `link` (`pipe:[INO]` or a
    /// FIFO's path) and fdinfo text is `fdinfo`. The first description of
    /// each pipe carries its size and queued bytes; the pipe is left as it
    /// was.
    ///
    /// Errors: a FIFO whose path was deleted ([`Error::Unsupported`]); a
    /// failing fstat, fcntl, tee or read (naming the pipe).
    pub fn dump(&mut self, fd: BorrowedFd<'_>, fdinfo: &str, link: &str) -> Result<PipeEntry> {
        let flags = fdinfo_flags(fdinfo)?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| os_err(link, e))?;
        let ino = st.st_ino;
        let fifo = if link.starts_with("pipe:") {
            None
        } else if let Some(p) = link.strip_suffix(" (deleted)") {
            return Err(Error::Unsupported(format!(
                "the FIFO {p} was deleted while open; it cannot be reopened by path"
            )));
        } else {
            Some(link.to_string())
        };
        let state = if self.seen.insert((st.st_dev, ino)) {
            Some(peek(fd, flags, &name(ino, &fifo))?)
        } else {
            None
        };
        Ok(PipeEntry {
            ino,
            fifo,
            flags,
            state,
        })
    }
}

/// Size and queued bytes of the pipe of `fd`, left in place.
fn peek(fd: BorrowedFd<'_>, flags: u32, what: &str) -> Result<PipeState> {
    let size = fcntl(fd.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)
        .map_err(|e| os_err(format!("{what}: F_GETPIPE_SZ"), e))? as u32;
    // tee(2) needs a readable description: a write end is reopened for
    // reading (never blocks: O_NONBLOCK, and a pipe's open for reading
    // does not wait for a writer).
    let reopened;
    let r = if accmode(flags) == libc::O_WRONLY {
        reopened = reopen(fd, libc::O_RDONLY | libc::O_NONBLOCK, what)?;
        reopened.as_fd()
    } else {
        fd
    };
    let queued = crate::sys::fionread(r).map_err(|e| os_err(format!("{what}: FIONREAD"), e))?;
    if queued == 0 {
        return Ok(PipeState {
            size,
            data: Vec::new(),
        });
    }
    let (sr, sw) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| os_err(format!("{what}: scratch pipe2"), e))?;
    fcntl(sw.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size as i32))
        .map_err(|e| os_err(format!("{what}: scratch pipe F_SETPIPE_SZ({size})"), e))?;
    let n = crate::sys::tee_nonblock(r, sw.as_fd(), queued)
        .map_err(|e| os_err(format!("{what}: tee"), e))?;
    if n != queued {
        return Err(Error::Unsupported(format!(
            "{what}: tee(2) copied {n} of the {queued} queued bytes"
        )));
    }
    let mut data = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match nix::unistd::read(sr.as_raw_fd(), &mut data[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(os_err(format!("{what}: reading the scratch pipe"), e)),
        }
    }
    data.truncate(got);
    Ok(PipeState { size, data })
}

struct Restored {
    /// Read and write ends from pipe2(2); for a FIFO both are one O_RDWR
    /// open of its path, which keeps the buffer alive until restore ends.
    read: OwnedFd,
    write: OwnedFd,
    read_used: bool,
    write_used: bool,
    filled: bool,
}

/// Recreates pipe descriptions in criu, one pipe per dumped inode.
///
/// Keep it until every description of the tree has been passed to its
/// task, then drop it: it holds both ends of each pipe, so a pipe whose
/// readers (or writers) were all closed at dump has none again after.
#[derive(Default)]
pub struct PipeRestorer {
    pipes: HashMap<(Option<String>, u64), Restored>,
}

impl PipeRestorer {
    /// A restorer that has created no pipe yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new open file description for `e`, in criu: the pipe is created
    /// on first use, refilled from whichever description carries its
    /// [`PipeState`], and shared by every description of the same inode.
    ///
    /// Errors: pipe2, open or fcntl failed (naming the pipe), e.g. a size
    /// above `/proc/sys/fs/pipe-max-size` without `CAP_SYS_RESOURCE`.
    pub fn open(&mut self, e: &PipeEntry) -> Result<OwnedFd> {
        let what = name(e.ino, &e.fifo);
        let key = (e.fifo.clone(), e.ino);
        if !self.pipes.contains_key(&key) {
            let p = create(e, &what)?;
            self.pipes.insert(key.clone(), p);
        }
        let p = self.pipes.get_mut(&key).expect("inserted above");
        if let (Some(st), false) = (&e.state, p.filled) {
            fill(p, st, &what)?;
            p.filled = true;
        }
        let mode = accmode(e.flags);
        let fd = match (&e.fifo, mode) {
            (None, libc::O_RDONLY) if !p.read_used => {
                p.read_used = true;
                p.read
                    .try_clone()
                    .map_err(|err| os_err(format!("{what}: dup"), err))?
            }
            (None, libc::O_WRONLY) if !p.write_used => {
                p.write_used = true;
                p.write
                    .try_clone()
                    .map_err(|err| os_err(format!("{what}: dup"), err))?
            }
            (None, _) => {
                let via = if mode == libc::O_WRONLY {
                    &p.write
                } else {
                    &p.read
                };
                reopen(via.as_fd(), mode | libc::O_NONBLOCK, &what)?
            }
            (Some(path), _) => open_path(path, mode | libc::O_NONBLOCK)
                .map_err(|err| os_err(format!("{what}: open"), err))?,
        };
        super::set_status_flags(fd.as_fd(), e.flags, &what)?;
        Ok(fd)
    }
}

fn create(e: &PipeEntry, what: &str) -> Result<Restored> {
    let (read, write) = match &e.fifo {
        None => {
            let direct = if e.flags as i32 & libc::O_DIRECT != 0 {
                OFlag::O_DIRECT
            } else {
                OFlag::empty()
            };
            nix::unistd::pipe2(OFlag::O_CLOEXEC | direct)
                .map_err(|err| os_err(format!("{what}: pipe2"), err))?
        }
        Some(path) => {
            let md = std::fs::metadata(path).map_err(|err| os_err(what, err))?;
            if !std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()) {
                return Err(Error::Refused(format!(
                    "{path} is no longer a FIFO; it cannot be reopened"
                )));
            }
            // O_RDWR on a FIFO never blocks (see fifo(7)).
            let fd = open_path(path, libc::O_RDWR | libc::O_NONBLOCK)
                .map_err(|err| os_err(format!("{what}: open"), err))?;
            let dup = fd
                .try_clone()
                .map_err(|err| os_err(format!("{what}: dup"), err))?;
            (fd, dup)
        }
    };
    Ok(Restored {
        read,
        write,
        read_used: e.fifo.is_some(),
        write_used: e.fifo.is_some(),
        filled: false,
    })
}

fn fill(p: &Restored, st: &PipeState, what: &str) -> Result<()> {
    let cur = fcntl(p.write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)
        .map_err(|e| os_err(format!("{what}: F_GETPIPE_SZ"), e))? as u32;
    if cur != st.size {
        fcntl(p.write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(st.size as i32)).map_err(|e| {
            os_err(
                format!(
                    "{what}: F_SETPIPE_SZ({}) (see /proc/sys/fs/pipe-max-size)",
                    st.size
                ),
                e,
            )
        })?;
    }
    if st.data.is_empty() {
        return Ok(());
    }
    // A description of our own, non-blocking, so the ones handed to the
    // task keep their flags; the data fits (it was in a pipe this size).
    let w = reopen(p.write.as_fd(), libc::O_WRONLY | libc::O_NONBLOCK, what)?;
    let mut off = 0;
    while off < st.data.len() {
        match nix::unistd::write(&w, &st.data[off..]) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(os_err(
                    format!("{what}: refilling {} bytes", st.data.len()),
                    e,
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fdinfo(fd: &OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap()
    }
    fn link(fd: &OwnedFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
    fn dump(d: &mut PipeDumper, fd: &OwnedFd) -> PipeEntry {
        d.dump(fd.as_fd(), &fdinfo(fd), &link(fd)).unwrap()
    }
    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn data_size_and_both_ends() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1031)).unwrap();
        let size = fcntl(w.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
        assert_eq!(size, 4096, "1031 rounds up to one page");
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        nix::unistd::write(&w, &data).unwrap();

        let mut d = PipeDumper::new();
        let ew = dump(&mut d, &w);
        let er = dump(&mut d, &r);
        assert_eq!(ew.ino, er.ino);
        assert_eq!(
            ew.state.as_ref().unwrap().data,
            data,
            "dumped via the write end"
        );
        assert_eq!(ew.state.as_ref().unwrap().size, 4096);
        assert!(er.state.is_none(), "the buffer is dumped once per pipe");
        assert_eq!(read_all(&r), data, "dump left the data in place");

        // Restore in the other order: the state arrives second.
        let mut rs = PipeRestorer::new();
        let nr = rs.open(&er).unwrap();
        let nw = rs.open(&ew).unwrap();
        drop(rs);
        assert_eq!(fcntl(nw.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap(), 4096);
        let fl = OFlag::from_bits_truncate(fcntl(nr.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(fl.contains(OFlag::O_NONBLOCK));
        assert_eq!(link(&nr), link(&nw), "one pipe");
        assert_ne!(link(&nr), link(&r), "a new pipe");
        assert_eq!(read_all(&nr), data);
        nix::unistd::write(&nw, b"more").unwrap();
        assert_eq!(read_all(&nr), b"more");
    }

    #[test]
    fn big_pipe_full_and_extra_descriptions() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
        let data: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        assert_eq!(nix::unistd::write(&w, &data).unwrap(), 1 << 20);
        // A second read description, blocking.
        let r2 = reopen(r.as_fd(), libc::O_RDONLY, "t").unwrap();
        let mut d = PipeDumper::new();
        let er = dump(&mut d, &r);
        let er2 = dump(&mut d, &r2);
        let ew = dump(&mut d, &w);
        assert_eq!(er.state.as_ref().unwrap().data.len(), 1 << 20);
        assert_eq!(er.state.as_ref().unwrap().data, data);
        assert_eq!(er2.flags as i32 & libc::O_NONBLOCK, 0);

        let mut rs = PipeRestorer::new();
        let nr = rs.open(&er).unwrap();
        let nr2 = rs.open(&er2).unwrap();
        let nw = rs.open(&ew).unwrap();
        drop(rs);
        assert_eq!(link(&nr), link(&nr2));
        let fl = OFlag::from_bits_truncate(fcntl(nr2.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(!fl.contains(OFlag::O_NONBLOCK));
        assert_eq!(
            fcntl(nw.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap(),
            1 << 20
        );
        assert_eq!(read_all(&nr2), data);
    }

    #[test]
    fn crafted_entries_are_refused() {
        let mut e = PipeEntry {
            ino: 1,
            fifo: None,
            flags: 0,
            state: Some(PipeState {
                size: 4,
                data: b"abcd".to_vec(),
            }),
        };
        assert_eq!(e.check(), Ok(()));
        e.state.as_mut().unwrap().data.push(b'e');
        assert!(e
            .check()
            .unwrap_err()
            .contains("holds 5 bytes in a buffer of 4"));
        e.state = None;
        e.fifo = Some("relative/fifo".into());
        assert!(e.check().unwrap_err().contains("not absolute"));
    }

    #[test]
    fn reader_only_sees_eof_after_data() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        nix::unistd::write(&w, b"tail").unwrap();
        let mut d = PipeDumper::new();
        let er = dump(&mut d, &r);
        drop(w);
        let mut rs = PipeRestorer::new();
        let nr = rs.open(&er).unwrap();
        drop(rs);
        let mut buf = [0u8; 16];
        assert_eq!(nix::unistd::read(nr.as_raw_fd(), &mut buf).unwrap(), 4);
        assert_eq!(
            nix::unistd::read(nr.as_raw_fd(), &mut buf).unwrap(),
            0,
            "EOF"
        );
    }

    #[test]
    fn fifo_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let p = path.to_str().unwrap();
        let rw = open_path(p, libc::O_RDWR).unwrap();
        let w = open_path(p, libc::O_WRONLY).unwrap();
        nix::unistd::write(&w, b"queued").unwrap();
        let mut d = PipeDumper::new();
        let ew = dump(&mut d, &w);
        let erw = dump(&mut d, &rw);
        assert_eq!(ew.fifo.as_deref(), Some(p));
        assert_eq!(ew.state.as_ref().unwrap().data, b"queued");
        drop((w, rw));
        let mut rs = PipeRestorer::new();
        let nw = rs.open(&ew).unwrap();
        let nrw = rs.open(&erw).unwrap();
        drop(rs);
        assert_eq!(
            fcntl(nw.as_raw_fd(), FcntlArg::F_GETFL).unwrap() & libc::O_ACCMODE,
            libc::O_WRONLY
        );
        assert_eq!(read_all(&nrw), b"queued");
    }
}
