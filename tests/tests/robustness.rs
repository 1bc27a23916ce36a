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

/// A helper that exits without answering (here /bin/true in its place) is
/// an error at once, not a wait forever: criu must not keep the helper's
/// end of the channel open itself. The target is left untraced.
#[test]
fn helper_that_exits_at_once_is_an_error_not_a_hang() {
    let Some(t) = Test::new("helper_exits") else {
        return;
    };
    let pid = t
        .spawn_target(std::process::Command::new("sleep").arg("100"))
        .id() as i32;
    let mut child = std::process::Command::new(&bins().criu)
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(t.images())
        .env("CRIU_HELPER", "/bin/true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start criu");
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait criu") {
            break st;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            t.fail("criu hung waiting for a helper that had exited");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    if status.success() || !err.contains("closed the channel") {
        t.fail(&format!("expected a clear failure, got {status}: {err}"));
    }
    t.assert_running_untouched(pid, "after the failed dump");
}
