//! pidfds of a child in the tree and of the process itself come back
//! referring to the same processes: the restored parent signals its child
//! through its pidfd and sees it exit by polling the pidfd.

use criu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Parent with a pidfd of its child (fd 7) and of itself (fd 8); every
/// 50 ms it writes `alive N` to `state`. When `go` exists it sends SIGTERM
/// to the child through the pidfd, polls the pidfd until the child exits,
/// and writes `done <child's exit signal>`.
const PROGRAM: &str = r#"
import os, select, signal, sys, time
state, go = sys.argv[1], sys.argv[2]
child = os.fork()
if child == 0:
    while True:
        time.sleep(1)
os.dup2(os.pidfd_open(child), 7)
os.dup2(os.pidfd_open(os.getpid()), 8)
n = 0
def put(s):
    with open(state + ".tmp", "w") as f:
        f.write(s)
    os.replace(state + ".tmp", state)
while not os.path.exists(go):
    n += 1
    put(f"alive {child} {n}\n")
    time.sleep(0.05)
signal.pidfd_send_signal(7, signal.SIGTERM)
p = select.poll()
p.register(7, select.POLLIN)
ready = p.poll(5000)
_, status = os.waitpid(child, 0)
self_ok = open(f"/proc/self/fdinfo/8").read().count(f"Pid:\t{os.getpid()}\n")
put(f"done {bool(ready)} {os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1} {self_ok}\n")
time.sleep(60)
"#;

fn words(path: &Path) -> Vec<String> {
    read(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn pidfds_refer_to_the_same_processes_after_restore() {
    let Some(t) = Test::new("pidfd") else { return };
    let (st, go) = (t.work().join("state"), t.work().join("go"));
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(PROGRAM)
                .arg(&st)
                .arg(&go),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        words(&st).first().is_some_and(|w| w == "alive")
    }) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    let child: i32 = words(&st)[1].parse().unwrap();
    t.track(child);
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    let _ = reap(child, Duration::from_secs(10));
    t.restore_detached(pid, &[]);
    std::fs::write(&go, "").unwrap();
    if !wait_for(Duration::from_secs(10), || {
        words(&st).first().is_some_and(|w| w == "done")
    }) {
        t.fail(&format!(
            "restored parent did not finish with its child: {:?} {}",
            words(&st),
            describe(pid)
        ));
    }
    let w = words(&st);
    if w != ["done", "True", "15", "1"] {
        t.fail(&format!(
            "expected the child killed by SIGTERM through its pidfd, seen by poll, and the own pidfd intact: {w:?}"
        ));
    }
    kill_and_reap(pid);
}
