//! Regular files with their state, checked from inside the restored
//! process: flags (`O_APPEND`, `O_NONBLOCK`, `O_PATH`, `O_TMPFILE`),
//! offsets, directories, owners (`F_SETOWN`/`F_SETSIG`), deleted files
//! with their contents (`--ghost-limit`), and locks (`--file-locks`: POSIX,
//! OFD, flock, a read lease), which the test also tries to take from
//! outside.

use criu_tests::*;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Opens its files, then every 50 ms writes to `state` a report of what it
/// sees through each descriptor and a counter (the line `n N`).
const PROGRAM: &str = r#"
import fcntl, os, struct, sys, time
d, state = sys.argv[1], sys.argv[2]
ghost_size = int(sys.argv[3])
F_SETSIG, F_GETSIG = 10, 11
F_OFD_SETLK = 37
def p(name): return os.path.join(d, name)
for n in "abcde":
    with open(p(n + ".txt"), "w") as f: f.write(n * 100)
fds = {}
fds["append"] = os.open(p("a.txt"), os.O_WRONLY | os.O_APPEND)
fds["offset"] = os.open(p("b.txt"), os.O_RDONLY | os.O_NONBLOCK)
os.lseek(fds["offset"], 37, os.SEEK_SET)
fds["dir"] = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
fds["path"] = os.open(p("b.txt"), os.O_PATH)
fds["tmpfile"] = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fds["tmpfile"], b"tmpfile contents")
fds["ghost"] = os.open(p("gone.txt"), os.O_RDWR | os.O_CREAT, 0o640)
os.write(fds["ghost"], (b"ghost!" * (ghost_size // 6 + 1))[:ghost_size])
os.lseek(fds["ghost"], 3, os.SEEK_SET)
os.unlink(p("gone.txt"))
fds["wghost"] = os.open(p("wgone.txt"), os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fds["wghost"], b"w" * 100)
os.unlink(p("wgone.txt"))
fds["owned"] = os.open(p("c.txt"), os.O_RDONLY)
fcntl.fcntl(fds["owned"], fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(fds["owned"], F_SETSIG, 10)
fds["flock"] = os.open(p("c.txt"), os.O_RDWR)
fds["posix"] = os.open(p("d.txt"), os.O_RDWR)
fds["ofd"] = os.open(p("e.txt"), os.O_RDWR)
fds["direct"] = os.open(p("b.txt"), os.O_RDONLY | os.O_DIRECT)
with open(p("f.txt"), "w") as f: f.write("lease")
fds["lease"] = os.open(p("f.txt"), os.O_RDONLY)
locks = len(sys.argv) > 4
if locks:
    fcntl.flock(fds["flock"], fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.lockf(fds["posix"], fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    fcntl.fcntl(fds["ofd"], F_OFD_SETLK, struct.pack("hhxxxxqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))
    fcntl.fcntl(fds["lease"], fcntl.F_SETLEASE, fcntl.F_RDLCK)
n = 0
while True:
    n += 1
    out = []
    for k, fd in sorted(fds.items()):
        fl = fcntl.fcntl(fd, fcntl.F_GETFL) & ~0o100000
        pos = os.lseek(fd, 0, os.SEEK_CUR) if k not in ("path", "dir") else -1
        out.append(f"{k} fd={fd} flags={fl:o} pos={pos}")
    out.append(f"owner {fcntl.fcntl(fds['owned'], fcntl.F_GETOWN)} sig {fcntl.fcntl(fds['owned'], F_GETSIG)}")
    g = os.pread(fds["ghost"], ghost_size + 10, 0)
    out.append(f"ghost {len(g)} {g[:12]!r} links {os.fstat(fds['ghost']).st_nlink}")
    out.append(f"tmpfile {os.pread(fds['tmpfile'], 100, 0)!r}")
    out.append(f"wghost size {os.fstat(fds['wghost']).st_size}")
    out.append(f"lease {fcntl.fcntl(fds['lease'], fcntl.F_GETLEASE)}")
    out.append(f"dir {sorted(os.listdir(fds['dir']))[:3]}")
    with open(state + ".tmp", "w") as f:
        f.write("\n".join(out) + f"\nn {n}\n")
    os.replace(state + ".tmp", state)
    time.sleep(0.05)
"#;

/// The report without its counter, and the counter.
fn report(path: &Path) -> Option<(String, u64)> {
    let text = read(path)?;
    let (body, n) = text.trim_end().rsplit_once("\nn ")?;
    Some((body.to_string(), n.parse().ok()?))
}

fn start(t: &Test, ghost: usize, locks: bool) -> (i32, std::path::PathBuf) {
    let dir = t.work().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let st = t.work().join("state.txt");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PROGRAM)
        .arg(&dir)
        .arg(&st)
        .arg(ghost.to_string());
    if locks {
        cmd.arg("locks");
    }
    let pid = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        report(&st).is_some_and(|(_, n)| n >= 2)
    }) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    (pid, st)
}

/// Whether the test (another process, another open file description) could
/// take `kind` on `path`: flock(2) for real, the others asked with
/// `F_OFD_GETLK` (OFD and POSIX locks conflict with each other).
fn can_lock(path: &Path, kind: &str) -> bool {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: plain calls on our own descriptor.
    unsafe {
        match kind {
            "flock" => libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0,
            _ => {
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as i16;
                fl.l_whence = libc::SEEK_SET as i16;
                libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) == 0
                    && fl.l_type == libc::F_UNLCK as i16
            }
        }
    }
}

#[test]
fn files_keep_flags_offsets_owner_ghosts_and_locks() {
    let Some(t) = Test::new("regular_files") else {
        return;
    };
    let (pid, st) = start(&t, 3000, true);
    let dir = t.work().join("files");
    let (before, at_dump) = report(&st).unwrap();
    for (file, kind) in [("c.txt", "flock"), ("d.txt", "posix"), ("e.txt", "ofd")] {
        if can_lock(&dir.join(file), kind) {
            t.fail(&format!("{kind} lock on {file} not held before the dump"));
        }
    }
    t.dump(pid, &["--file-locks"]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);

    let mut after = None;
    if !wait_for(Duration::from_secs(10), || {
        after = report(&st).filter(|(_, n)| *n > at_dump + 2);
        after.is_some()
    }) {
        t.fail(&format!(
            "restored target does not report: {}",
            describe(pid)
        ));
    }
    let (after, _) = after.unwrap();
    if after != before {
        t.fail(&format!(
            "the process sees other descriptors after restore:\n--- before\n{before}\n--- after\n{after}"
        ));
    }
    for must in [
        "ghost 3000 b'ghost!ghost!' links 0",
        "tmpfile b'tmpfile contents'",
        "wghost size 100",
        &format!("lease {}", libc::F_RDLCK),
        &format!("direct fd=14 flags={:o}", libc::O_DIRECT),
        &format!("owner {pid} sig 10"),
    ] {
        if !after.contains(must) {
            t.fail(&format!("report lacks {must:?}:\n{after}"));
        }
    }
    let links = fd_links(pid);
    if !links
        .iter()
        .any(|(_, l)| l.ends_with("/files/gone.txt (deleted)"))
    {
        t.fail(&format!("no deleted gone.txt among {links:?}"));
    }
    if std::fs::read_dir(&dir).unwrap().count() != 6 {
        t.fail("restore left files behind in the directory");
    }
    for (file, kind) in [("c.txt", "flock"), ("d.txt", "posix"), ("e.txt", "ofd")] {
        if can_lock(&dir.join(file), kind) {
            t.fail(&format!("{kind} lock on {file} not held after restore"));
        }
    }
    kill_and_reap(pid);
}

#[test]
fn locks_need_file_locks_option() {
    let Some(t) = Test::new("file_locks_refused") else {
        return;
    };
    let (pid, _) = start(&t, 10, true);
    t.dump_refused(pid, &[], &[&format!("pid {pid} fd"), "--file-locks"]);
    kill_and_reap(pid);
}

#[test]
fn ghost_over_limit_is_refused() {
    let Some(t) = Test::new("ghost_limit") else {
        return;
    };
    let (pid, st) = start(&t, 5000, false);
    t.dump_refused(
        pid,
        &["--ghost-limit", "4K"],
        &["gone.txt", "5000 bytes", "--ghost-limit"],
    );
    let (_, n) = report(&st).unwrap();
    if !wait_for(Duration::from_secs(5), || {
        report(&st).is_some_and(|(_, m)| m > n)
    }) {
        t.fail("target stopped reporting after the refused dump");
    }
    kill_and_reap(pid);
}
