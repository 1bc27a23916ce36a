//! `/dev/tty` opened by a process whose controlling terminal is a pty of
//! the tree names that pty again after restore (not criu's terminal): the
//! child writes through it and the parent reads it from the master.

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

/// pty.fork(): the child (session leader on the slave) opens /dev/tty at
/// fd 9 and, each time `go-N` exists, writes `tty-N` through fd 9; the
/// parent copies what it reads from the master into `out`.
const PROGRAM: &str = r#"
import os, pty, sys, time
d = sys.argv[1]
pid, m = pty.fork()
if pid == 0:
    import termios, tty
    tty.setraw(0)
    os.dup2(os.open("/dev/tty", os.O_RDWR), 9)
    open(d + "/child", "w").write(str(os.getpid()))
    n = 0
    while True:
        if os.path.exists(f"{d}/go-{n}"):
            os.write(9, f"tty-{n};".encode())
            n += 1
        time.sleep(0.05)
out = open(d + "/out", "ab", buffering=0)
while True:
    out.write(os.read(m, 100))
"#;

#[test]
fn dev_tty_names_the_trees_pty_after_restore() {
    let Some(t) = Test::new("dev_tty") else {
        return;
    };
    let w = t.work();
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(PROGRAM).arg(&w))
        .id() as i32;
    let out = || read(&w.join("out")).unwrap_or_default();
    std::fs::write(w.join("go-0"), "").unwrap();
    if !wait_for(Duration::from_secs(20), || out().contains("tty-0;")) {
        t.fail(&format!(
            "target did not start: {:?} {}",
            out(),
            describe(pid)
        ));
    }
    let child: i32 = read(&w.join("child")).unwrap().parse().unwrap();
    t.track(child);
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    let _ = reap(child, Duration::from_secs(10));
    t.restore_detached(pid, &[]);
    std::fs::write(w.join("go-1"), "").unwrap();
    if !wait_for(Duration::from_secs(10), || out().contains("tty-1;")) {
        t.fail(&format!(
            "the child's /dev/tty does not reach the pty after restore: {:?} {}",
            out(),
            describe(child)
        ));
    }
    kill_and_reap(pid);
    kill_and_reap(child);
}
