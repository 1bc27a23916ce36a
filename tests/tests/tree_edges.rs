//! Process trees at the edges: a stopped process (dumped with and without
//! `-R`, restored stopped), a tree with a task traced by another tracer, a
//! process whose main thread has exited while its threads run, a tree with
//! a task waiting in vfork, and a tree whose restore fails in its deepest
//! child (nothing of it may be left).

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

/// A chain of python3 processes, `argv[2]` deep below the root: each level
/// writes `PID COUNTER` to `c<level>` every 50 ms. With `argv[3]` = "deep",
/// the deepest process works in `work/deep` (its cwd).
const CHAIN: &str = r#"
import os, sys, time
d = sys.argv[1]
depth = int(sys.argv[2])
lvl = 0
for i in range(depth):
    if os.fork():
        break
    lvl += 1
if lvl == depth and len(sys.argv) > 3:
    os.chdir(d + "/deep")
n = 0
while True:
    n += 1
    open(d + f"/c{lvl}.tmp", "w").write(f"{os.getpid()} {n}")
    os.replace(d + f"/c{lvl}.tmp", d + f"/c{lvl}")
    time.sleep(0.05)
"#;

/// Starts the chain with `levels` processes and returns their pids, root
/// first, once every one counts.
fn start_chain(t: &Test, levels: u32, deep_cwd: bool) -> Vec<i32> {
    let w = t.work();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(CHAIN)
        .arg(&w)
        .arg((levels - 1).to_string());
    if deep_cwd {
        std::fs::create_dir(w.join("deep")).expect("mkdir deep");
        cmd.arg("deep");
    }
    let root = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        (0..levels).all(|l| level_counter(&w, l).is_some_and(|c| c.1 >= 3))
    }) {
        t.fail(&format!("the chain did not start: {}", describe(root)));
    }
    let pids: Vec<i32> = (0..levels)
        .map(|l| level_counter(&w, l).unwrap().0)
        .collect();
    for &p in &pids {
        t.track(p);
    }
    pids
}

/// Fails unless every level's counter goes on.
fn assert_counting(t: &Test, levels: u32, when: &str) {
    let w = t.work();
    let start: Vec<u64> = (0..levels)
        .map(|l| level_counter(&w, l).map_or(0, |c| c.1))
        .collect();
    if !wait_for(Duration::from_secs(5), || {
        (0..levels).all(|l| level_counter(&w, l).is_some_and(|c| c.1 > start[l as usize] + 2))
    }) {
        t.fail(&format!("{when}: not every process counts on"));
    }
}

/// Fails unless `pid` stays stopped (state `T`, untraced) and its counter
/// does not move for a while.
fn assert_stopped(t: &Test, pid: i32, lvl: u32, when: &str) {
    if !wait_for(Duration::from_secs(3), || {
        proc_state(pid) == Some('T') && tracer_pid(pid) == Some(0)
    }) {
        t.fail(&format!(
            "{when}: pid {pid} should be stopped, untraced: {}",
            describe(pid)
        ));
    }
    let before = level_counter(&t.work(), lvl);
    std::thread::sleep(Duration::from_millis(300));
    if level_counter(&t.work(), lvl) != before || proc_state(pid) != Some('T') {
        t.fail(&format!("{when}: pid {pid} runs although stopped"));
    }
}

#[test]
fn stopped_process_stays_stopped() {
    let Some(t) = Test::new("stopped") else {
        return;
    };
    let pid = start_chain(&t, 1, false)[0];
    signal(pid, libc::SIGSTOP).expect("SIGSTOP");
    if !wait_for(Duration::from_secs(5), || proc_state(pid) == Some('T')) {
        t.fail(&format!("SIGSTOP did not stop it: {}", describe(pid)));
    }

    // -R: the stopped process is left as it was, stopped and untraced.
    let r_images = t.root().join("images-r");
    std::fs::create_dir(&r_images).expect("mkdir images-r");
    t.criu_ok(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        r_images.to_str().unwrap(),
        "-o",
        "dump.log",
        "-v4",
        "-R",
    ]);
    assert_stopped(&t, pid, 0, "after dump -R");
    signal(pid, libc::SIGCONT).expect("SIGCONT");
    assert_counting(&t, 1, "after dump -R and SIGCONT");

    // Default dump of a stopped process, then restore: stopped again.
    signal(pid, libc::SIGSTOP).expect("SIGSTOP");
    if !wait_for(Duration::from_secs(5), || proc_state(pid) == Some('T')) {
        t.fail(&format!(
            "second SIGSTOP did not stop it: {}",
            describe(pid)
        ));
    }
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    assert_stopped(&t, pid, 0, "after restore");
    signal(pid, libc::SIGCONT).expect("SIGCONT");
    assert_counting(&t, 1, "after restore and SIGCONT");
    kill_and_reap(pid);
}

/// Seizes `argv[1]` with PTRACE_SEIZE (it keeps running) and writes
/// "seized" to `argv[2]`, then sleeps: it stays the tracer.
const TRACER: &str = r#"
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if libc.ptrace(0x4206, int(sys.argv[1]), None, None) != 0:
    sys.exit(ctypes.get_errno())
open(sys.argv[2], "w").write("seized")
while True:
    time.sleep(1)
"#;

#[test]
fn tree_with_a_task_traced_by_another_tracer_is_refused() {
    let Some(t) = Test::new("traced_member") else {
        return;
    };
    let pids = start_chain(&t, 3, false);
    let traced = pids[2];
    let flag = t.work().join("seized");
    let tracer = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(TRACER)
                .arg(traced.to_string())
                .arg(&flag),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(10), || flag.exists()) {
        t.fail(&format!(
            "the tracer did not seize {traced}: {}",
            describe(tracer)
        ));
    }
    if tracer_pid(traced) != Some(tracer) {
        t.fail(&format!(
            "{traced} is not traced by {tracer}: {}",
            describe(traced)
        ));
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
        &[&format!("pid {traced}"), &format!("traced by pid {tracer}")],
    );
    for &p in &pids[..2] {
        t.assert_running_untouched(p, "after the refused dump");
    }
    if !matches!(proc_state(traced), Some('R' | 'S')) || tracer_pid(traced) != Some(tracer) {
        t.fail(&format!(
            "the traced task changed (want running, traced by {tracer}): {}",
            describe(traced)
        ));
    }
    assert_counting(&t, 3, "after the refused dump");
    if std::fs::read_dir(&images).unwrap().flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("inventory"))
    }) {
        t.fail("a refused dump wrote an inventory");
    }
    kill_and_reap(tracer);
    for &p in pids.iter() {
        kill_and_reap(p);
    }
}

/// Forks a child whose main thread exits (raw exit(2), the process lives on
/// in a second thread that counts in `c1`); the parent counts in `c0`.
const HALF_EXITED: &str = r#"
import ctypes, os, sys, threading, time
d = sys.argv[1]
def count(lvl):
    n = 0
    while True:
        n += 1
        open(d + f"/c{lvl}.tmp", "w").write(f"{os.getpid()} {n}")
        os.replace(d + f"/c{lvl}.tmp", d + f"/c{lvl}")
        time.sleep(0.05)
if os.fork() == 0:
    threading.Thread(target=count, args=(1,)).start()
    time.sleep(0.2)
    ctypes.CDLL(None).syscall(60, 0)
count(0)
"#;

#[test]
fn process_whose_main_thread_exited_is_refused() {
    let Some(t) = Test::new("half_exited") else {
        return;
    };
    let w = t.work();
    let root = t
        .spawn_target(Command::new("python3").arg("-c").arg(HALF_EXITED).arg(&w))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        (0..2).all(|l| level_counter(&w, l).is_some_and(|c| c.1 >= 8))
    }) {
        t.fail(&format!("the program did not start: {}", describe(root)));
    }
    let child = level_counter(&w, 1).unwrap().0;
    t.track(child);
    if proc_state(child) != Some('Z') {
        t.fail(&format!(
            "the child's leader should show as Z: {}",
            describe(child)
        ));
    }
    let images = t.images();
    for (target, whom) in [(root, "the tree"), (child, "the process itself")] {
        t.criu_err(
            &[
                "dump",
                "-t",
                &target.to_string(),
                "-D",
                images.to_str().unwrap(),
                "-o",
                "dump.log",
                "-v4",
            ],
            &[&format!("pid {child} is exiting"), "main thread has exited"],
        );
        t.assert_running_untouched(root, &format!("after the refused dump of {whom}"));
        assert_counting(&t, 2, &format!("after the refused dump of {whom}"));
    }
    kill_and_reap(child);
    kill_and_reap(root);
}

#[test]
fn failed_restore_of_a_tree_leaves_nothing() {
    let Some(t) = Test::new("restore_all_or_none") else {
        return;
    };
    let pids = start_chain(&t, 3, true);
    t.dump(pids[0], &[]);
    reap_dumped(&t, pids[0]);
    for &p in &pids[1..] {
        if let Err(e) = reap(p, Duration::from_secs(10)) {
            t.fail(&format!("dumped child {p} was not killed: {e}"));
        }
    }
    // Only the deepest process works there: its restore fails at chdir,
    // after every process of the tree has been created.
    let deep = t.work().join("deep");
    std::fs::remove_dir(&deep).expect("rmdir deep");
    let images = t.images();
    let run = t.criu_err(
        &[
            "restore",
            "-d",
            "-D",
            images.to_str().unwrap(),
            "-o",
            "restore.log",
            "-v4",
        ],
        &[&format!("pid {}", pids[2]), "chdir", "deep"],
    );
    let log = read(run.log_file.as_ref().unwrap()).unwrap_or_default();
    if !log.contains(&format!("stub {} created", pids[0])) {
        t.fail("the restore did not fail in the middle (no stub was created)");
    }
    for &p in &pids {
        t.assert_no_process(p);
    }
    // Repaired, the same images restore whole.
    std::fs::create_dir(&deep).expect("mkdir deep");
    t.restore_detached(pids[0], &[]);
    for &p in &pids {
        t.track(p);
        if !is_alive(p) {
            t.fail(&format!("pid {p} not restored: {}", describe(p)));
        }
    }
    assert_counting(&t, 3, "after the repaired restore");
    for &p in pids.iter() {
        kill_and_reap(p);
    }
}

/// The children of `pid` (its main thread's).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// A tree with a task inside vfork(2) (`criu-workload --vfork`: root, a
/// child waiting in vfork, the vfork child that never execs) cannot be
/// frozen whole: a dump of the tree, and of the waiting task itself, fails
/// naming it, and every task of the tree is left running and untraced.
#[test]
fn tree_with_a_task_in_vfork_is_refused() {
    let Some(t) = Test::new("tree_vfork") else {
        return;
    };
    let mut cmd = Command::new(&bins().workload);
    cmd.arg("--vfork");
    let root = t.spawn_target(&mut cmd).id() as i32;
    let mut tasks = Vec::new();
    if !wait_for(Duration::from_secs(10), || {
        let Some(&child) = children(root).first() else {
            return false;
        };
        let Some(&vforked) = children(child).first() else {
            return false;
        };
        tasks = vec![root, child, vforked];
        true
    }) {
        t.fail(&format!("the vfork tree did not start: {}", describe(root)));
    }
    for &p in &tasks[1..] {
        t.track(p);
    }
    let waiting = tasks[1];
    let images = t.images();
    for target in [root, waiting] {
        t.criu_err(
            &[
                "dump",
                "-t",
                &target.to_string(),
                "-D",
                images.to_str().unwrap(),
                "-o",
                "dump.log",
                "-v4",
            ],
            &[&format!("pid {waiting} thread {waiting} is inside vfork()")],
        );
        for &p in &tasks {
            t.assert_running_untouched(p, &format!("after the refused dump of {target}"));
        }
        if children(waiting) != [tasks[2]] || children(root) != [waiting] {
            t.fail(&format!(
                "the tree changed after the refused dump of {target}: {}",
                describe(root)
            ));
        }
        if std::fs::read_dir(&images).unwrap().flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("inventory"))
        }) {
            t.fail("a refused dump wrote an inventory");
        }
    }
    // The root first: its orphans come to us (the subreaper) and are reaped.
    for &p in &tasks {
        kill_and_reap(p);
    }
}
