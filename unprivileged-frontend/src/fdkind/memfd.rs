//! Open file descriptions of memfd files (see memfd_create(2)).
//!
//! A memfd is an anonymous tmpfs file: its name (the `NAME` of the
//! `/proc/PID/fd` link `/memfd:NAME (deleted)`), size, mode, seals
//! (`F_GET_SEALS`, see fcntl(2) "File sealing") and contents belong to the
//! inode and are dumped once per memfd, with its first description; each
//! description keeps its own open flags and file offset.
//!
//! The contents go to a raw file of their own in the image directory,
//! `memfd-INO.img`: the data extents (SEEK_DATA/SEEK_HOLE, see lseek(2))
//! one after another, so holes cost nothing. They are read through a
//! private reopen of the memfd, never moving the task's file offset. At
//! restore the memfd is created with `MFD_ALLOW_SEALING`, refilled, given
//! its mode, then its seals; further descriptions of it reopen
//! `/proc/self/fd/N`.
//!
//! Mappings of a memfd ([`MemfdMap`] in the mm image) name the same inode:
//! the memfd is made once in criu for all its descriptions and mappings,
//! whichever comes first at restore (memory is restored before
//! descriptors), from whichever record carries its [`MemfdState`]. A memfd
//! only mapped (its descriptor closed after mmap) is read at dump through
//! `/proc/PID/map_files/START-END` (see proc(5); it needs
//! `CAP_CHECKPOINT_RESTORE`), or through a descriptor of it the process
//! still has.
//!
//! Not handled: memfds on hugetlbfs (`MFD_HUGETLB`, refused at dump).

use super::{fdinfo_field, fdinfo_flags, open_path, os_err};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One open file description of a memfd.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemfdEntry {
    /// Inode number; descriptions with the same one share the file.
    pub ino: u64,
    /// The name given to memfd_create(2) (without the `memfd:` prefix).
    pub name: String,
    /// Open flags of this description, without `O_CLOEXEC`.
    pub flags: u32,
    /// File offset of this description in bytes.
    pub pos: u64,
    /// The file, carried by the first description of each memfd dumped.
    pub state: Option<MemfdState>,
}

/// A mapping of a memfd (see [`crate::images::types::VmaKind::Memfd`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemfdMap {
    /// Inode number, as [`MemfdEntry::ino`] of its descriptions.
    pub ino: u64,
    /// The name given to memfd_create(2).
    pub name: String,
    /// The file, carried by the first mapping or description of each
    /// memfd dumped.
    pub state: Option<MemfdState>,
}

impl MemfdMap {
    /// Check a mapping read from an image, as [`MemfdEntry::check`].
    ///
    /// Errors: what is wrong, for an image error.
    pub fn check(&self) -> std::result::Result<(), String> {
        MemfdEntry {
            ino: self.ino,
            name: self.name.clone(),
            flags: 0,
            pos: 0,
            state: self.state.clone(),
        }
        .check()
    }
}

/// The file behind a memfd.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemfdState {
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 07777`).
    pub mode: u32,
    /// Seals (`F_SEAL_SEAL`, `F_SEAL_SHRINK`, `F_SEAL_GROW`,
    /// `F_SEAL_WRITE`, `F_SEAL_FUTURE_WRITE`, `F_SEAL_EXEC`).
    pub seals: u32,
    /// Data extents as (offset, length) in bytes, in increasing order;
    /// their bytes follow one another in [`MemfdState::data_file`].
    pub extents: Vec<(u64, u64)>,
    /// Name of the raw contents file in the image directory.
    pub data_file: String,
}

impl MemfdEntry {
    /// Check an entry read from an image: the contents file is
    /// `memfd-INO.img` (no other path), the extents are in order and
    /// inside the size.
    ///
    /// Errors: what is wrong, for an image error.
    pub fn check(&self) -> std::result::Result<(), String> {
        let Some(st) = &self.state else {
            return Ok(());
        };
        if st.data_file != format!("memfd-{}.img", self.ino) {
            return Err(format!(
                "memfd:{} names contents file {:?}, not memfd-{}.img",
                self.name, st.data_file, self.ino
            ));
        }
        let mut end = 0u64;
        for &(off, len) in &st.extents {
            let e = off.checked_add(len).filter(|&e| off >= end && e <= st.size);
            match e {
                Some(e) => end = e,
                None => {
                    return Err(format!(
                        "memfd:{}: extent ({off}, {len}) out of order or past its size {}",
                        self.name, st.size
                    ))
                }
            }
        }
        Ok(())
    }
}

/// `/memfd:NAME (deleted)` to `NAME`; `None` for any other link.
pub fn memfd_name(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

/// Dumps memfd descriptions, writing each memfd's contents once.
#[derive(Debug)]
pub struct MemfdDumper {
    dir: PathBuf,
    seen: HashSet<(u64, u64)>,
}

impl MemfdDumper {
    /// A dumper writing contents files into the image directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        MemfdDumper {
            dir: dir.into(),
            seen: HashSet::new(),
        }
    }

    /// Whether the memfd with inode `ino` is saved already.
    pub fn saved(&self, ino: u64) -> bool {
        self.seen.iter().any(|&(_, i)| i == ino)
    }

    /// Dump a mapping of the memfd with inode `ino` and name `name`: its
    /// file is saved with the first mapping or description of it, through
    /// `fd` (a description of it in criu, only needed then).
    ///
    /// Errors: no `fd` for a memfd not saved yet, a hugetlb memfd
    /// ([`Error::Unsupported`]); failing reads or image writes.
    pub fn dump_mapping(
        &mut self,
        fd: Option<BorrowedFd<'_>>,
        ino: u64,
        name: &str,
    ) -> Result<MemfdMap> {
        let what = format!("memfd:{name}");
        let state = match fd {
            _ if self.saved(ino) => None,
            None => {
                return Err(Error::Unsupported(format!(
                    "{what} (inode {ino}): no description of it to read it through"
                )))
            }
            Some(fd) => {
                let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| os_err(&what, e))?;
                check_not_hugetlb(fd, &what)?;
                if st.st_ino != ino {
                    return Err(Error::Unsupported(format!(
                        "{what}: the file opened for the mapping is inode {}, the mapping's is {ino}",
                        st.st_ino
                    )));
                }
                self.seen.insert((st.st_dev, st.st_ino));
                Some(self.save(fd, &what, ino, st.st_size as u64, st.st_mode)?)
            }
        };
        Ok(MemfdMap {
            ino,
            name: name.to_string(),
            state,
        })
    }

    /// Dump the description `fd` (criu's duplicate of the task's
    /// descriptor; its offset is not moved) with fdinfo text `fdinfo` and
    /// `/proc/PID/fd` link `link`.
    ///
    /// Errors: a link that is not a memfd's or a hugetlb memfd
    /// ([`Error::Unsupported`]); failing reads or image writes.
    pub fn dump(&mut self, fd: BorrowedFd<'_>, fdinfo: &str, link: &str) -> Result<MemfdEntry> {
        let name = memfd_name(link)
            .ok_or_else(|| Error::parse("memfd", format!("{link:?} is not a memfd link")))?
            .to_string();
        let what = format!("memfd:{name}");
        let pos = fdinfo_field(fdinfo, "pos")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::parse("memfd fdinfo", "no pos: line"))?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| os_err(&what, e))?;
        check_not_hugetlb(fd, &what)?;
        let state = if self.seen.insert((st.st_dev, st.st_ino)) {
            Some(self.save(fd, &what, st.st_ino, st.st_size as u64, st.st_mode)?)
        } else {
            None
        };
        Ok(MemfdEntry {
            ino: st.st_ino,
            name,
            flags: fdinfo_flags(fdinfo)?,
            pos,
            state,
        })
    }

    fn save(
        &self,
        fd: BorrowedFd<'_>,
        what: &str,
        ino: u64,
        size: u64,
        mode: u32,
    ) -> Result<MemfdState> {
        let seals = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GET_SEALS)
            .map_err(|e| os_err(format!("{what}: F_GET_SEALS"), e))? as u32;
        // A private description: seeking it leaves the task's offset alone.
        let own = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let f = std::fs::File::from(
            open_path(&own, libc::O_RDONLY).map_err(|e| os_err(format!("{what}: reopening"), e))?,
        );
        let extents = data_extents(&f, size).map_err(|e| os_err(format!("{what}: lseek"), e))?;
        let data_file = format!("memfd-{ino}.img");
        let path = self.dir.join(&data_file);
        let out = std::fs::File::create(&path).map_err(|e| Error::file(&path, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut buf = vec![0u8; 1 << 20];
        for &(off, len) in &extents {
            let mut done = 0u64;
            while done < len {
                let k = (len - done).min(buf.len() as u64) as usize;
                f.read_exact_at(&mut buf[..k], off + done)
                    .map_err(|e| os_err(format!("{what}: reading at {}", off + done), e))?;
                out.write_all(&buf[..k])
                    .map_err(|e| Error::file(&path, e))?;
                done += k as u64;
            }
        }
        let out = out
            .into_inner()
            .map_err(|e| Error::file(&path, e.into_error()))?;
        out.sync_all().map_err(|e| Error::file(&path, e))?;
        Ok(MemfdState {
            size,
            mode: mode & 0o7777,
            seals,
            extents,
            data_file,
        })
    }
}

fn check_not_hugetlb(fd: BorrowedFd<'_>, what: &str) -> Result<()> {
    let fs = nix::sys::statfs::fstatfs(fd).map_err(|e| os_err(what, e))?;
    if fs.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC {
        return Err(Error::Unsupported(format!(
            "{what} is on hugetlbfs (MFD_HUGETLB), which criu does not restore"
        )));
    }
    Ok(())
}

/// The data extents of `f` below `size`, as (offset, length).
fn data_extents(f: &std::fs::File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match lseek(f.as_raw_fd(), at as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = (lseek(f.as_raw_fd(), start as i64, Whence::SeekHole)? as u64).min(size);
        if end > start {
            out.push((start, end - start));
        }
        at = end;
    }
    Ok(out)
}

struct Restored {
    file: OwnedFd,
    used: bool,
    /// Seals added by [`MemfdRestorer::finish`], once every mapping is made.
    later: u32,
}

/// `F_SEAL_FUTURE_WRITE` (see fcntl(2), Linux 5.1+).
const F_SEAL_FUTURE_WRITE: u32 = 0x10;

/// The seals of `seals` that must wait until the mappings are made: a
/// shared writable mapping made before `F_SEAL_FUTURE_WRITE` stays
/// writable, but none can be made after it; `F_SEAL_SEAL` then waits too,
/// since it forbids adding any seal.
fn later_seals(seals: u32) -> u32 {
    if seals & F_SEAL_FUTURE_WRITE != 0 {
        F_SEAL_FUTURE_WRITE | (seals & libc::F_SEAL_SEAL as u32)
    } else {
        0
    }
}

/// Recreates memfd descriptions and the files behind memfd mappings in
/// criu, one memfd per dumped inode; drop it once every description and
/// mapping has been passed to its task.
pub struct MemfdRestorer {
    dir: PathBuf,
    files: HashMap<u64, Restored>,
    /// The saved file of each memfd, by inode, from whichever description
    /// or mapping carries it.
    states: HashMap<u64, MemfdState>,
}

impl MemfdRestorer {
    /// A restorer reading contents files from the image directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        MemfdRestorer {
            dir: dir.into(),
            files: HashMap::new(),
            states: HashMap::new(),
        }
    }

    /// Note the saved file of the memfd with inode `ino` (from a
    /// [`MemfdEntry`] or [`MemfdMap`] that has one); call for every record
    /// before the first [`MemfdRestorer::open`].
    pub fn know(&mut self, ino: u64, state: &Option<MemfdState>) {
        if let Some(st) = state {
            self.states.entry(ino).or_insert_with(|| st.clone());
        }
    }

    /// The memfd of inode `ino`, made on first use and refilled, sized,
    /// chmod'ed and sealed from its saved file.
    ///
    /// Errors: no record carries its file (damaged images), memfd_create,
    /// the contents file (missing or short), writes, fcntl failed.
    fn file(&mut self, ino: u64, name: &str) -> Result<&mut Restored> {
        let what = format!("memfd:{name}");
        match self.files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let st = self.states.get(&ino).ok_or_else(|| {
                    Error::Refused(format!(
                        "{what} (inode {ino}): no record in the images carries its contents; the images are damaged, dump again"
                    ))
                })?;
                let c = std::ffi::CString::new(name)
                    .map_err(|_| Error::Refused(format!("{what}: the name has a NUL byte")))?;
                let fd = nix::sys::memfd::memfd_create(
                    &c,
                    nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC
                        | nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
                )
                .map_err(|err| os_err(format!("{what}: memfd_create"), err))?;
                fill(&self.dir, fd.as_fd(), st, &what)?;
                Ok(v.insert(Restored {
                    file: fd,
                    used: false,
                    later: later_seals(st.seals),
                }))
            }
        }
    }

    /// A description of the memfd behind mapping `m`, to map it: read-write
    /// when `write` (a shared writable mapping), else read-only.
    ///
    /// Errors: those of making the memfd, or reopening it.
    pub fn for_mapping(&mut self, m: &MemfdMap, write: bool) -> Result<OwnedFd> {
        let r = self.file(m.ino, &m.name)?;
        let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let p = format!("/proc/self/fd/{}", r.file.as_raw_fd());
        open_path(&p, mode | libc::O_CLOEXEC)
            .map_err(|err| os_err(format!("memfd:{}: reopening", m.name), err))
    }

    /// Add the seals that had to wait for the mappings (see
    /// [`later_seals`]); call once every process has its memory.
    ///
    /// Errors: fcntl(`F_ADD_SEALS`) failed.
    pub fn finish(&mut self) -> Result<()> {
        for r in self.files.values_mut().filter(|r| r.later != 0) {
            let seals = nix::fcntl::SealFlag::from_bits_retain(r.later as i32);
            nix::fcntl::fcntl(r.file.as_raw_fd(), nix::fcntl::FcntlArg::F_ADD_SEALS(seals))
                .map_err(|e| os_err(format!("memfd: F_ADD_SEALS({:#x})", r.later), e))?;
            r.later = 0;
        }
        Ok(())
    }

    /// A new open file description for `e`, in criu: the memfd is made on
    /// first use (see [`MemfdRestorer::know`]).
    ///
    /// Errors: memfd_create, the contents file (missing or short: the image
    /// is incomplete), writes, fcntl or lseek failed.
    pub fn open(&mut self, e: &MemfdEntry) -> Result<OwnedFd> {
        let what = format!("memfd:{}", e.name);
        self.know(e.ino, &e.state);
        let r = self.file(e.ino, &e.name)?;
        let mode = e.flags as i32 & libc::O_ACCMODE;
        let fd = if !r.used && mode == libc::O_RDWR {
            r.used = true;
            r.file
                .try_clone()
                .map_err(|err| os_err(format!("{what}: dup"), err))?
        } else {
            let p = format!("/proc/self/fd/{}", r.file.as_raw_fd());
            open_path(&p, mode).map_err(|err| os_err(format!("{what}: reopening"), err))?
        };
        super::set_status_flags(fd.as_fd(), e.flags, &what)?;
        nix::unistd::lseek(fd.as_raw_fd(), e.pos as i64, nix::unistd::Whence::SeekSet)
            .map_err(|err| os_err(format!("{what}: lseek({})", e.pos), err))?;
        Ok(fd)
    }
}

fn fill(dir: &Path, fd: BorrowedFd<'_>, st: &MemfdState, what: &str) -> Result<()> {
    let f = std::fs::File::from(
        fd.try_clone_to_owned()
            .map_err(|e| os_err(format!("{what}: dup"), e))?,
    );
    f.set_len(st.size)
        .map_err(|e| os_err(format!("{what}: ftruncate({})", st.size), e))?;
    let path = dir.join(&st.data_file);
    let data = std::fs::File::open(&path).map_err(|e| Error::file(&path, e))?;
    let mut data = std::io::BufReader::with_capacity(1 << 20, data);
    let mut buf = vec![0u8; 1 << 20];
    for &(off, len) in &st.extents {
        let mut done = 0u64;
        while done < len {
            let k = (len - done).min(buf.len() as u64) as usize;
            data.read_exact(&mut buf[..k]).map_err(|e| {
                Error::Image(crate::images::ImageError::invalid(
                    &path,
                    format!(
                        "contents of {what} cut short ({e}); the image is incomplete, dump again"
                    ),
                ))
            })?;
            f.write_all_at(&buf[..k], off + done)
                .map_err(|e| os_err(format!("{what}: writing at {}", off + done), e))?;
            done += k as u64;
        }
    }
    f.set_permissions(std::fs::Permissions::from_mode(st.mode))
        .map_err(|e| os_err(format!("{what}: fchmod({:o})", st.mode), e))?;
    let now = st.seals & !later_seals(st.seals);
    if now != 0 {
        let seals = nix::fcntl::SealFlag::from_bits_retain(now as i32);
        nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| os_err(format!("{what}: F_ADD_SEALS({now:#x})"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

    fn fdinfo(fd: &OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap()
    }
    fn link(fd: &OwnedFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
    fn seals(fd: &OwnedFd) -> i32 {
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GET_SEALS).unwrap()
    }
    fn pos(fd: &OwnedFd) -> i64 {
        nix::unistd::lseek(fd.as_raw_fd(), 0, nix::unistd::Whence::SeekCur).unwrap()
    }

    #[test]
    fn contents_name_seals_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::ffi::CString::new("my data").unwrap();
        let m = memfd_create(
            &c,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .unwrap();
        let f = std::fs::File::from(m.try_clone().unwrap());
        // Sparse: 3 bytes at 0, 8 KiB at 1 MiB, size 4 MiB.
        f.write_all_at(b"abc", 0).unwrap();
        let mid: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&mid, 1 << 20).unwrap();
        f.set_len(4 << 20).unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o640))
            .unwrap();
        nix::unistd::lseek(m.as_raw_fd(), 77, nix::unistd::Whence::SeekSet).unwrap();
        let ro = open_path(&format!("/proc/self/fd/{}", m.as_raw_fd()), libc::O_RDONLY).unwrap();
        let sl = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        nix::fcntl::fcntl(
            m.as_raw_fd(),
            nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::from_bits_retain(sl)),
        )
        .unwrap();

        let mut d = MemfdDumper::new(dir.path());
        let e1 = d.dump(m.as_fd(), &fdinfo(&m), &link(&m)).unwrap();
        let e2 = d.dump(ro.as_fd(), &fdinfo(&ro), &link(&ro)).unwrap();
        assert_eq!(pos(&m), 77, "dump did not move the offset");
        assert_eq!(e1.name, "my data");
        assert_eq!(e1.pos, 77);
        assert!(e2.state.is_none());
        let st = e1.state.as_ref().unwrap();
        assert_eq!(st.size, 4 << 20);
        assert_eq!(st.seals as i32, sl);
        assert_eq!(st.mode, 0o640);
        let stored = std::fs::metadata(dir.path().join(&st.data_file))
            .unwrap()
            .len();
        assert!(stored < 64 * 1024, "holes are not stored ({stored} bytes)");

        // A mapping of it dumped after its descriptions carries nothing.
        let mapped = d.dump_mapping(None, e1.ino, "my data").unwrap();
        assert!(mapped.state.is_none());

        let mut r = MemfdRestorer::new(dir.path());
        // As FileSender does: every record's state first, so the first
        // description or mapping made finds it whoever carries it.
        for e in [&e2, &e1] {
            r.know(e.ino, &e.state);
        }
        let map = r.for_mapping(&mapped, false).unwrap();
        let n2 = r.open(&e2).unwrap();
        let n1 = r.open(&e1).unwrap();
        drop(r);
        assert_eq!(
            nix::sys::stat::fstat(map.as_raw_fd()).unwrap().st_ino,
            nix::sys::stat::fstat(n1.as_raw_fd()).unwrap().st_ino,
            "the mapping's file is the descriptions'"
        );
        assert_eq!(link(&n1), "/memfd:my data (deleted)");
        assert_eq!(
            nix::sys::stat::fstat(n1.as_raw_fd()).unwrap().st_ino,
            nix::sys::stat::fstat(n2.as_raw_fd()).unwrap().st_ino
        );
        assert_eq!(pos(&n1), 77);
        assert_eq!(pos(&n2), 0);
        assert_eq!(
            nix::fcntl::fcntl(n2.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap()
                & libc::O_ACCMODE,
            libc::O_RDONLY
        );
        assert_eq!(seals(&n1), sl);
        let g = std::fs::File::from(n1);
        assert_eq!(g.metadata().unwrap().len(), 4 << 20);
        assert_eq!(g.metadata().unwrap().permissions().mode() & 0o7777, 0o640);
        let mut all = vec![0u8; 4 << 20];
        g.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(&all[..3], b"abc");
        assert_eq!(&all[1 << 20..(1 << 20) + 8192], &mid[..]);
        assert!(all[3..1 << 20].iter().all(|&b| b == 0));
        assert!(g.set_len(1).is_err(), "F_SEAL_SHRINK restored");
    }

    #[test]
    fn mapping_only_memfd() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::ffi::CString::new("only mapped").unwrap();
        let m = memfd_create(&c, MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        std::fs::File::from(m.try_clone().unwrap())
            .write_all_at(b"xyz", 5000)
            .unwrap();
        let ino = nix::sys::stat::fstat(m.as_raw_fd()).unwrap().st_ino;
        let mut d = MemfdDumper::new(dir.path());
        let e = d.dump_mapping(None, ino, "only mapped").unwrap_err();
        assert!(e.to_string().contains("no description"), "{e}");
        let e = d.dump_mapping(Some(m.as_fd()), ino + 1, "x").unwrap_err();
        assert!(e.to_string().contains("is inode"), "{e}");
        let mapped = d.dump_mapping(Some(m.as_fd()), ino, "only mapped").unwrap();
        assert_eq!(mapped.check(), Ok(()));
        assert_eq!(mapped.state.as_ref().unwrap().size, 5003);

        let mut r = MemfdRestorer::new(dir.path());
        let e = r.for_mapping(&mapped, true).unwrap_err().to_string();
        assert!(e.contains("no record in the images"), "{e}");
        r.know(mapped.ino, &mapped.state);
        let f = std::fs::File::from(r.for_mapping(&mapped, true).unwrap());
        let mut b = [0u8; 3];
        f.read_exact_at(&mut b, 5000).unwrap();
        assert_eq!(&b, b"xyz");
        assert_eq!(link(&f.into()), "/memfd:only mapped (deleted)");
    }

    #[test]
    fn crafted_entries_are_refused() {
        let good = MemfdEntry {
            ino: 7,
            name: "x".into(),
            flags: libc::O_RDWR as u32,
            pos: 0,
            state: Some(MemfdState {
                size: 100,
                mode: 0o600,
                seals: 0,
                extents: vec![(0, 10), (50, 50)],
                data_file: "memfd-7.img".into(),
            }),
        };
        assert_eq!(good.check(), Ok(()));
        let mut e = good.clone();
        e.state.as_mut().unwrap().data_file = "../../etc/shadow".into();
        assert!(e.check().unwrap_err().contains("not memfd-7.img"));
        let mut e = good.clone();
        e.state.as_mut().unwrap().extents = vec![(50, 10), (0, 10)];
        assert!(e.check().unwrap_err().contains("out of order"));
        let mut e = good.clone();
        e.state.as_mut().unwrap().extents = vec![(90, u64::MAX)];
        assert!(e.check().is_err());
    }

    #[test]
    fn unsealable_memfd_and_missing_contents() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::ffi::CString::new("x").unwrap();
        let m = memfd_create(&c, MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::write(&m, b"hello").unwrap();
        let mut d = MemfdDumper::new(dir.path());
        let e = d.dump(m.as_fd(), &fdinfo(&m), &link(&m)).unwrap();
        assert_eq!(e.state.as_ref().unwrap().seals as i32, libc::F_SEAL_SEAL);
        let n = MemfdRestorer::new(dir.path()).open(&e).unwrap();
        assert_eq!(seals(&n), libc::F_SEAL_SEAL);
        assert_eq!(pos(&n), 5);

        std::fs::remove_file(dir.path().join(&e.state.as_ref().unwrap().data_file)).unwrap();
        let err = MemfdRestorer::new(dir.path())
            .open(&e)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("memfd-") && err.contains("No such file"),
            "{err}"
        );
    }
}
