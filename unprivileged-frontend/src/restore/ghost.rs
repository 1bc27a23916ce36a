//! Deleted files ("ghost" files) made again: a file that was unlinked while
//! open (or an `O_TMPFILE` file never linked) exists only through its
//! descriptors, so dump saved its contents and restore creates a new file
//! with them, owner, mode and modification time, and unlinks it at once.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// Names tried beside `path` when `path` itself is taken.
const TRIES: u32 = 100;

/// Whether `path` names an `O_TMPFILE` file: its last component is `#`
/// and the inode number (see open(2), `O_TMPFILE`; that is how the kernel
/// names it in `/proc/PID/fd`).
pub fn is_tmpfile_name(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('#'))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Create the file again with the `size` bytes of `src` (`ghost-N.img`),
/// unlinked: with `O_TMPFILE` in its directory when it was one, else at
/// `path` when that name is free or beside it (`PATH.criu-ghost-N`), then
/// unlinked. Returns a descriptor of it, close-on-exec: read-write, or, for
/// an `O_TMPFILE` file whose dumped `flags` could write, opened with those
/// flags (`O_TMPFILE` shows in its `F_GETFL`) — then `true`.
///
/// Errors: the contents file is missing or has another size (damaged
/// images), the directory is gone, or a call failed.
#[allow(clippy::too_many_arguments)]
pub fn create(
    path: &str,
    src: &Path,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    flags: i32,
) -> std::io::Result<(OwnedFd, bool)> {
    let mut data = File::open(src)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
    let have = data.metadata()?.len();
    if have != size {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "{} holds {have} bytes, the image says {size}: damaged images, dump again",
                src.display()
            ),
        ));
    }
    let (mut f, exact) = new_unlinked(path, mode, flags)?;
    std::io::copy(&mut data, &mut f)?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    let mtime = if mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(mtime_ns as u64)
    } else {
        UNIX_EPOCH
    };
    f.set_modified(mtime)?;
    Ok((OwnedFd::from(f), exact))
}

fn new_unlinked(path: &str, mode: u32, flags: i32) -> std::io::Result<(File, bool)> {
    let p = Path::new(path);
    let dir = p.parent().unwrap_or(Path::new("/"));
    if is_tmpfile_name(path) {
        let acc = flags & libc::O_ACCMODE;
        let exact = flags & libc::O_TMPFILE == libc::O_TMPFILE && acc != libc::O_RDONLY;
        let custom = if exact {
            flags & !libc::O_ACCMODE & !libc::O_CLOEXEC
        } else {
            libc::O_TMPFILE
        };
        match std::fs::OpenOptions::new()
            .read(!exact || acc == libc::O_RDWR)
            .write(true)
            .custom_flags(custom)
            .mode(mode & 0o777)
            .open(dir)
        {
            Ok(f) => return Ok((f, exact)),
            // The filesystem cannot: a named file, unlinked, does as well.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    for i in 0..TRIES {
        let name = if i == 0 {
            path.to_string()
        } else {
            format!("{path}.criu-ghost-{i}")
        };
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&name)
        {
            Ok(f) => {
                std::fs::remove_file(&name)?;
                return Ok((f, false));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        ErrorKind::AlreadyExists,
        format!("{path} and {TRIES} names beside it are taken"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn tmpfile_names() {
        assert!(is_tmpfile_name("/tmp/#12345"));
        assert!(!is_tmpfile_name("/tmp/#"));
        assert!(!is_tmpfile_name("/tmp/#12a"));
        assert!(!is_tmpfile_name("/tmp/x#1"));
    }

    #[test]
    fn made_again_unlinked_with_contents() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("ghost-3.img");
        std::fs::write(&src, b"hello ghost").unwrap();
        let path = d.path().join("gone.txt");
        // The name is taken by a new file: the ghost goes beside it.
        std::fs::write(&path, b"new").unwrap();
        let p = path.to_str().unwrap();
        let (fd, exact) = create(p, &src, 11, 0o640, 0, 0, 1_000_000_000, libc::O_RDWR).unwrap();
        assert!(!exact);
        let mut f = File::from(fd);
        let md = f.metadata().unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&md), 0);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&md), 1);
        let mut s = String::new();
        use std::io::Seek;
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello ghost");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
        let e = create(p, &src, 12, 0o640, 0, 0, 0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("damaged"), "{e}");
    }
}
