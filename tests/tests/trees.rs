//! A python3 process tree (three levels of children, a second process group
//! led by the first child, a zombie that exited with code 7) in its own
//! session: after a detached restore every process has its PID, parent,
//! group and session again, the counters go on, and the zombie's parent
//! reaps exit code 7.

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn tree_with_groups_and_a_zombie() {
    let Some(t) = Test::new("trees") else { return };
    let w = t.work();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(TREE_PROGRAM).arg(&w);
    let root = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        (0..4).all(|l| level_counter(&w, l).is_some_and(|c| c.1 >= 3))
    }) {
        t.fail(&format!("the tree did not start: {}", describe(root)));
    }
    let pids: Vec<i32> = (0..4).map(|l| level_counter(&w, l).unwrap().0).collect();
    for &p in &pids[1..] {
        t.track(p);
    }
    let shape = |p: i32| (ppid(p), pgid(p), sid(p));
    let before: Vec<_> = pids.iter().map(|&p| shape(p)).collect();
    let zombie = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|&c| proc_state(c) == Some('Z'));
    let Some(zombie) = zombie else {
        t.fail("no zombie child")
    };

    t.dump(root, &[]);
    reap_dumped(&t, root);
    // The killed children and the zombie were reparented to us (the test is
    // a child subreaper): reap them so their PIDs are free for the restore.
    for &p in pids[1..].iter().chain(std::iter::once(&zombie)) {
        if let Err(e) = reap(p, Duration::from_secs(10)) {
            t.fail(&format!("dumped child {p} was not killed: {e}"));
        }
    }
    let at_dump: Vec<u64> = (0..4).map(|l| level_counter(&w, l).unwrap().1).collect();

    t.restore_detached(root, &[]);
    let after: Vec<_> = pids.iter().map(|&p| shape(p)).collect();
    if after != before {
        t.fail(&format!("tree shape changed: {before:?} -> {after:?}"));
    }
    let zombie_comm = comm(zombie);
    if proc_state(zombie) != Some('Z') || ppid(zombie) != Some(root) {
        t.fail(&format!(
            "pid {zombie} is not a zombie child of {root} again"
        ));
    }
    if zombie_comm != comm(root) {
        t.fail(&format!(
            "the zombie is named {zombie_comm:?}, not its parent's {:?}",
            comm(root)
        ));
    }
    if !wait_for(Duration::from_secs(10), || {
        (0..4).all(|l| level_counter(&w, l).is_some_and(|c| c.1 > at_dump[l as usize]))
    }) {
        t.fail("not every counter goes on after restore");
    }
    for l in 0..4 {
        let now = level_counter(&w, l).unwrap().1;
        if now > at_dump[l as usize] + 200 {
            t.fail(&format!(
                "counter {l} jumped {} -> {now}",
                at_dump[l as usize]
            ));
        }
    }
    signal(root, libc::SIGUSR1).expect("SIGUSR1");
    // open(.., "w") creates the file empty before the write: wait for text.
    if !wait_for(Duration::from_secs(5), || {
        read(&w.join("reaped")).is_some_and(|s| !s.trim().is_empty())
    }) {
        t.fail("the parent did not reap its zombie");
    }
    let code = read(&w.join("reaped")).unwrap();
    if code.trim() != "7" {
        t.fail(&format!("zombie exit code {code}, not 7"));
    }
    // Parents first: their orphans come to us (the subreaper) and are reaped.
    for &p in pids.iter() {
        kill_and_reap(p);
    }
}
