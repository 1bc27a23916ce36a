//! `sleep 5`: dump it half a second in, restore it without `-d`, and check
//! that it is the same sleeping process and that criu exits 0 when it ends.

use criu_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn sleep_dump_and_restore_in_foreground() {
    let Some(t) = Test::new("sleep") else { return };
    let pid = t.spawn_target(Command::new("sleep").arg("5")).id() as i32;
    std::thread::sleep(Duration::from_millis(500));
    if proc_state(pid) != Some('S') {
        t.fail(&format!(
            "sleep is not sleeping before the dump: {}",
            describe(pid)
        ));
    }

    t.dump(pid, &[]);
    reap_dumped(&t, pid);

    let images = t.images();
    let restore = t.spawn_criu(&[
        "restore",
        "-D",
        images.to_str().unwrap(),
        "-o",
        "restore.log",
        "-v4",
    ]);
    let started = Instant::now();
    t.track(pid);
    let mut restore = Some(restore);
    let up = restore
        .as_mut()
        .unwrap()
        .wait_while_running(Duration::from_secs(10), || {
            comm(pid).as_deref() == Some("sleep") && proc_state(pid) == Some('S')
        });
    if !up {
        let run = t.wait_criu(restore.take().unwrap(), Duration::from_secs(1));
        t.fail(&format!(
            "restored sleep not seen sleeping as pid {pid} (criu exit {}): {}",
            run.code(),
            describe(pid)
        ));
    }
    if sid(pid) != Some(pid) || pgid(pid) != Some(pid) {
        t.fail(&format!(
            "restored sleep lost its own session/process group: {}",
            describe(pid)
        ));
    }
    let mut restore = restore.take().unwrap();
    if restore.has_exited() {
        let run = t.wait_criu(restore, Duration::from_secs(1));
        t.fail(&format!(
            "criu restore (no -d) exited ({}) while sleep still runs",
            run.code()
        ));
    }

    let run = t.wait_criu(restore, Duration::from_secs(30));
    if run.code() != 0 {
        t.fail(&format!(
            "criu restore should exit with sleep's status 0, got {}",
            run.code()
        ));
    }
    let took = started.elapsed();
    if took < Duration::from_secs(3) {
        t.fail(&format!(
            "restored sleep ended after {took:?}; it had about 4.5 s left"
        ));
    }
    if !wait_for(Duration::from_secs(5), || !is_alive(pid)) {
        t.fail(&format!("criu restore exited but pid {pid} still runs"));
    }
}
