//! A dump interrupted by the death of criu or of criu-helper never harms the
//! target: it is let go with its own registers and signal mask and carries
//! on, its state intact (the workload's self-check still passes).

use criu_tests::*;
use std::time::{Duration, Instant};

/// Start a dump of `w` and, as soon as the helper has seized it, kill one of
/// the two processes with SIGKILL: the helper (the tracer) when `helper` is
/// true, else the criu frontend.
fn kill_mid_dump(t: &Test, w: &Workload, helper: bool) {
    let images = t.images();
    let pid = w.pid.to_string();
    let mut criu = t.spawn_criu(&[
        "dump",
        "-t",
        &pid,
        "-D",
        images.to_str().unwrap(),
        "-v4",
        "-o",
        "dump.log",
    ]);
    // Wait for the seize: the target then has a tracer (the helper).
    let deadline = Instant::now() + Duration::from_secs(20);
    let tracer = loop {
        match tracer_pid(w.pid) {
            Some(tp) if tp != 0 => break tp,
            _ if Instant::now() > deadline => t.fail("criu never seized the workload"),
            _ if criu.has_exited() => t.fail("criu finished before it could be interrupted"),
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    };
    let victim = if helper { tracer } else { criu.pid() };
    signal(victim, libc::SIGKILL).expect("kill");
    let run = t.wait_criu(criu, Duration::from_secs(30));
    if helper && run.code() == 0 {
        // The dump may have finished in the instant before the kill.
        eprintln!("note: the dump completed before the helper was killed");
    }
    t.assert_running_untouched(w.pid, "after the interrupted dump");
}

#[test]
fn helper_killed_mid_dump_leaves_target_unharmed() {
    let Some(t) = Test::new("helper_killed_mid_dump") else {
        return;
    };
    let w = t.start_workload();
    t.workload_check(&w, "before dump");
    for round in 0..3 {
        kill_mid_dump(&t, &w, true);
        t.assert_progressing(&w, &format!("after killed helper, round {round}"));
        t.workload_check(&w, &format!("after killed helper, round {round}"));
    }
    kill_and_reap(w.pid);
}

#[test]
fn frontend_killed_mid_dump_leaves_target_unharmed() {
    let Some(t) = Test::new("frontend_killed_mid_dump") else {
        return;
    };
    let w = t.start_workload();
    t.workload_check(&w, "before dump");
    for round in 0..3 {
        kill_mid_dump(&t, &w, false);
        t.assert_progressing(&w, &format!("after killed criu, round {round}"));
        t.workload_check(&w, &format!("after killed criu, round {round}"));
    }
    kill_and_reap(w.pid);
}
