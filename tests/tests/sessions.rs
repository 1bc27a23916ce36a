//! A session whose leader exited, under a subreaper root: the process in it
//! is now the root's child, so it cannot inherit the session at restore; a
//! short-lived task with the session's ID starts the session again and
//! forks it (as the root's child). Same PIDs, parents, sessions and groups
//! after restore, and it counts on.

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
fn leaderless_session_below_a_subreaper_comes_back() {
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
    let ids = |p: i32| (ppid(p), pgid(p), sid(p));
    let before = [ids(root), ids(y)];
    if before[1].0 != Some(root) || before[1].2 != Some(session) || session == root {
        t.fail(&format!(
            "set-up: y should be the root's child in session {session}: {}",
            describe(y)
        ));
    }
    t.dump(root, &[]);
    reap_dumped(&t, root);
    let _ = reap(y, Duration::from_secs(10));
    t.restore_detached(root, &[]);
    let after = [ids(root), ids(y)];
    if after != before {
        t.fail(&format!(
            "(ppid, pgid, sid) of root and y after restore {after:?}, before {before:?}"
        ));
    }
    // Its parent gets SIGCHLD when it dies, as before (field 38 of stat).
    let exit_signal = read(std::path::Path::new(&format!("/proc/{y}/stat")))
        .and_then(|t| {
            let rest = t.rsplit_once(')')?.1.to_string();
            rest.split_whitespace().nth(35).map(str::to_string)
        })
        .unwrap_or_default();
    if exit_signal != "17" {
        t.fail(&format!(
            "y's exit signal after restore is {exit_signal:?}, not SIGCHLD"
        ));
    }
    if is_alive(session) {
        t.fail(&format!(
            "the session holder {session} is still there: {}",
            describe(session)
        ));
    }
    let (_, s2, n) = state(&st).unwrap();
    if s2 != session
        || !wait_for(Duration::from_secs(5), || {
            state(&st).is_some_and(|(_, s, m)| s == session && m > n)
        })
    {
        t.fail(&format!(
            "y does not count on in session {session}: {:?}",
            state(&st)
        ));
    }
    kill_and_reap(root);
    kill_and_reap(y);
}
