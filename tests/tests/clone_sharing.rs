//! Processes made with clone(2) `CLONE_FS` / `CLONE_FILES` share their fs
//! information / descriptor table with their parent again after restore
//! (checked with kcmp(2) and by behaviour: a chdir or an open in the child
//! shows in the parent), one made without them shares nothing; a tree
//! where two siblings share fs information their parent no longer has is
//! refused at dump, leaving every process running.

use criu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The parent clones (raw clone(2), fork-like) a child with `CLONE_FS`
/// ("fs"), one with `CLONE_FILES` ("files") and one with neither ("none");
/// with `argv[2]` = "siblings" it clones two `CLONE_FS` children ("fs",
/// "fs2") and then unshares its own fs information. Every process writes
/// `DIR/<role>` = "pid n" every 50 ms. When `DIR/go` appears, the "fs"
/// child changes directory to `DIR/sub` and the "files" child opens
/// `DIR/go` at fd 77, once.
const PROGRAM: &str = r#"
import ctypes, os, sys, time
d = sys.argv[1]
siblings = len(sys.argv) > 2
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_FS, CLONE_FILES, SIGCHLD = 0x200, 0x400, 17
kinds = [("fs", CLONE_FS), ("fs2", CLONE_FS)] if siblings else \
    [("fs", CLONE_FS), ("files", CLONE_FILES), ("none", 0)]
role = "parent"
for name, fl in kinds:
    pid = libc.syscall(56, ctypes.c_ulong(fl | SIGCHLD), 0, 0, 0, 0)
    if pid == 0:
        role = name
        break
if role == "parent" and siblings:
    if libc.unshare(CLONE_FS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
done = False
n = 0
while True:
    n += 1
    if not done and os.path.exists(d + "/go"):
        done = True
        if role == "fs":
            os.chdir(d + "/sub")
        elif role == "files":
            fd = os.open(d + "/go", os.O_RDONLY)
            os.dup2(fd, 77)
            os.close(fd)
    open(d + f"/{role}.tmp", "w").write(f"{os.getpid()} {n}")
    os.replace(d + f"/{role}.tmp", d + f"/{role}")
    time.sleep(0.05)
"#;

/// kcmp(2) of resource `what` (`KCMP_FILES` 2, `KCMP_FS` 3) of two
/// processes: whether they share it.
fn kcmp_same(a: i32, b: i32, what: i32) -> bool {
    // SAFETY: kcmp takes only integers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, what, 0, 0) };
    r == 0
}
const KCMP_FILES: i32 = 2;
const KCMP_FS: i32 = 3;

fn counter(dir: &Path, role: &str) -> Option<(i32, u64)> {
    let text = read(&dir.join(role))?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Starts the program; returns the pids of `roles`, once each counts.
fn start(t: &Test, extra: &[&str], roles: &[&str]) -> Vec<i32> {
    let w = t.work();
    std::fs::create_dir(w.join("sub")).expect("mkdir sub");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PROGRAM)
        .arg(&w)
        .args(extra)
        .current_dir(&w);
    let root = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        roles
            .iter()
            .all(|r| counter(&w, r).is_some_and(|c| c.1 >= 3))
    }) {
        t.fail(&format!("the tree did not start: {}", describe(root)));
    }
    let pids: Vec<i32> = roles.iter().map(|r| counter(&w, r).unwrap().0).collect();
    for &p in &pids {
        t.track(p);
    }
    pids
}

/// Fails unless, against the parent, "fs" shares only fs information,
/// "files" only the descriptor table and "none" neither.
fn assert_shares(t: &Test, p: &[i32], when: &str) {
    let got: Vec<(bool, bool)> = p[1..]
        .iter()
        .map(|&c| (kcmp_same(p[0], c, KCMP_FS), kcmp_same(p[0], c, KCMP_FILES)))
        .collect();
    if got != [(true, false), (false, true), (false, false)] {
        t.fail(&format!(
            "{when}: (shares fs, shares files) with the parent of fs/files/none children: {got:?}"
        ));
    }
}

#[test]
fn clone_fs_and_files_stay_shared() {
    let Some(t) = Test::new("clone_sharing") else {
        return;
    };
    let w = t.work();
    let pids = start(&t, &[], &["parent", "fs", "files", "none"]);
    assert_shares(&t, &pids, "before dump");

    t.dump(pids[0], &[]);
    reap_dumped(&t, pids[0]);
    for &p in &pids[1..] {
        if let Err(e) = reap(p, Duration::from_secs(10)) {
            t.fail(&format!("dumped child {p} was not killed: {e}"));
        }
    }
    let show = t
        .criu_ok(&["show", "-D", t.images().to_str().unwrap()])
        .stdout;
    if !show.contains("shares with its parent: CLONE_FS\n")
        || !show.contains("shares with its parent: CLONE_FILES\n")
    {
        t.fail(&format!("criu show does not say what is shared:\n{show}"));
    }
    let at_dump = counter(&w, "parent").unwrap().1;

    t.restore_detached(pids[0], &[]);
    for &p in &pids {
        t.track(p);
    }
    if !wait_for(Duration::from_secs(10), || {
        counter(&w, "parent").is_some_and(|c| c.1 > at_dump + 3)
    }) {
        t.fail("the restored parent does not count on");
    }
    assert_shares(&t, &pids, "after restore");
    // Behaviour: the children's chdir and open show in the parent only.
    let cwd = |p: i32| std::fs::read_link(format!("/proc/{p}/cwd")).unwrap_or_default();
    let has_77 = |p: i32| Path::new(&format!("/proc/{p}/fd/77")).exists();
    std::fs::write(w.join("go"), b"go").expect("write go");
    let sub = w.join("sub");
    if !wait_for(Duration::from_secs(5), || {
        cwd(pids[0]) == sub && has_77(pids[0])
    }) {
        t.fail(&format!(
            "the parent does not see its children's chdir / open: cwd {}, fd 77 {}",
            cwd(pids[0]).display(),
            has_77(pids[0])
        ));
    }
    if cwd(pids[3]) == sub || has_77(pids[3]) {
        t.fail("the child that shares nothing got the chdir or the descriptor");
    }
    for &p in &pids {
        kill_and_reap(p);
    }
}

#[test]
fn siblings_sharing_fs_without_their_parent_are_refused() {
    let Some(t) = Test::new("clone_sharing_siblings") else {
        return;
    };
    let pids = start(&t, &["siblings"], &["parent", "fs", "fs2"]);
    if !kcmp_same(pids[1], pids[2], KCMP_FS) || kcmp_same(pids[0], pids[1], KCMP_FS) {
        t.fail("the siblings do not share fs information without the parent");
    }
    let images = t.images();
    t.criu_err(
        &[
            "dump",
            "-t",
            &pids[0].to_string(),
            "-D",
            images.to_str().unwrap(),
            "-o",
            "dump.log",
            "-v4",
        ],
        &[
            &format!(
                "processes [{}, {}]",
                pids[1].min(pids[2]),
                pids[1].max(pids[2])
            ),
            "filesystem information (CLONE_FS)",
        ],
    );
    for &p in &pids {
        t.assert_running_untouched(p, "after the refused dump");
    }
    let w = t.work();
    let start: Vec<u64> = ["parent", "fs", "fs2"]
        .iter()
        .map(|r| counter(&w, r).unwrap().1)
        .collect();
    if !wait_for(Duration::from_secs(5), || {
        ["parent", "fs", "fs2"]
            .iter()
            .zip(&start)
            .all(|(r, &s)| counter(&w, r).is_some_and(|c| c.1 > s + 2))
    }) {
        t.fail("not every process counts on after the refused dump");
    }
    for &p in &pids {
        kill_and_reap(p);
    }
}
