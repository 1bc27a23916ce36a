//! A session whose leader exited, under a subreaper root: restore cannot
//! rebuild it yet, so the dump refuses before killing anything, naming the
//! process and the session, and every task runs on.

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

/// The root leads its session and is a subreaper; its child x starts a new
/// session, forks y (which counts in `state`) and exits; the root reaps x,
/// so y (parent: the root) is in session x, which has no leader.
const PROGRAM: &str = r#"
import ctypes, os, sys, time
state = sys.argv[1]
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
x = os.fork()
if x == 0:
    os.setsid()
    if os.fork() == 0:
        n = 0
        while True:
            n += 1
            with open(state + ".tmp", "w") as f:
                f.write(f"{os.getpid()} {os.getsid(0)} {n}")
            os.replace(state + ".tmp", state)
            time.sleep(0.05)
    os._exit(0)
os.waitpid(x, 0)
while True:
    time.sleep(1)
"#;

fn state(p: &std::path::Path) -> Option<(i32, i32, u64)> {
    let t = read(p)?;
    let v: Vec<&str> = t.split_whitespace().collect();
    Some((
        v.first()?.parse().ok()?,
        v.get(1)?.parse().ok()?,
        v.get(2)?.parse().ok()?,
    ))
}

#[test]
fn leaderless_session_below_a_subreaper_is_refused_at_dump() {
    let Some(t) = Test::new("leaderless_session") else {
        return;
    };
    let st = t.work().join("state");
    let root = t
        .spawn_target(Command::new("python3").arg("-c").arg(PROGRAM).arg(&st))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        state(&st).is_some_and(|(_, _, n)| n >= 2)
    }) {
        t.fail(&format!("target did not start: {}", describe(root)));
    }
    let (y, session, _) = state(&st).unwrap();
    t.track(y);
    if ppid(y) != Some(root) || sid(y) == Some(root) {
        t.fail(&format!(
            "set-up: y should be the root's child in session {session}: {}",
            describe(y)
        ));
    }
    let images = t.images();
    t.criu_err(
        &[
            "dump",
            "-t",
            &root.to_string(),
            "-D",
            images.to_str().unwrap(),
        ],
        &[
            &format!("pid {y}: its session {session}"),
            "cannot be rebuilt",
        ],
    );
    for p in [root, y] {
        t.assert_running_untouched(p, "after the refused dump");
    }
    let (_, _, n) = state(&st).unwrap();
    if !wait_for(Duration::from_secs(5), || {
        state(&st).is_some_and(|(_, _, m)| m > n)
    }) {
        t.fail("y stopped counting after the refused dump");
    }
    if images.join("inventory.img").exists() {
        t.fail("the refused dump left an inventory.img");
    }
    kill_and_reap(root);
    kill_and_reap(y);
}
