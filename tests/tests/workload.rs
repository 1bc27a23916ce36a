//! The `criu-workload` program: memory patterns, a private file mapping,
//! descriptors, signal handlers and mask, timers and an alternate signal
//! stack survive a dump and a restore; `-R`, `-s` and a foreground restore
//! behave as upstream criu does.

use criu_tests::*;
use std::time::Duration;

/// The workload checks itself correctly when nothing was done to it (so a
/// failed check after a restore is criu's fault, not the workload's).
#[test]
fn workload_self_check_without_criu() {
    let t = Test::unprivileged("workload_self_check");
    let w = t.start_workload();
    t.workload_check(&w, "first check");
    t.workload_check(&w, "second check");
    kill_and_reap(w.pid);
}

#[test]
fn workload_survives_dump_and_restore() {
    let Some(t) = Test::new("workload") else {
        return;
    };
    let w = t.start_workload();
    t.workload_check(&w, "before dump");
    let maps_before = maps(w.pid);
    let fds_before = fd_links(w.pid);

    t.dump(w.pid, &[]);
    reap_dumped(&t, w.pid);
    let at_dump = w.progress().unwrap_or(0);

    t.restore_detached(w.pid, &[]);
    if comm(w.pid).as_deref() != Some("criu-workload") {
        t.fail(&format!(
            "restored pid {} is not criu-workload: {}",
            w.pid,
            describe(w.pid)
        ));
    }
    let fds_after = fd_links(w.pid);
    if fds_after != fds_before {
        t.fail(&format!(
            "descriptors 3+ differ:\n  before: {fds_before:?}\n  after:  {fds_after:?}"
        ));
    }
    let counter = t.workload_check(&w, "after restore");
    if counter < at_dump {
        t.fail(&format!(
            "counter restarted: {counter} after restore, {at_dump} at dump"
        ));
    }
    let now = t.assert_progressing(&w, "after restore");
    if now < at_dump {
        t.fail(&format!("progress went back from {at_dump} to {now}"));
    }
    let maps_after = maps(w.pid);
    let missing: Vec<&String> = maps_before
        .iter()
        .filter(|m| !maps_after.contains(m))
        .collect();
    let extra: Vec<&String> = maps_after
        .iter()
        .filter(|m| !maps_before.contains(m))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        t.fail(&format!(
            "memory layout differs after restore:\n  missing: {missing:#?}\n  extra: {extra:#?}"
        ));
    }
    t.workload_check(&w, "second check after restore");
    t.assert_pages_copied_with_userfaultfd(w.pid, 8 << 20);
    kill_and_reap(w.pid);
}

#[test]
fn dump_leave_running() {
    let Some(t) = Test::new("leave_running") else {
        return;
    };
    let w = t.start_workload();
    t.dump(w.pid, &["-R"]);
    t.assert_workload_unharmed(&w, "after dump -R");
    for img in [
        "inventory.img",
        "pstree.img",
        &format!("core-{}.img", w.pid),
    ] {
        if !t.images().join(img).is_file() {
            t.fail(&format!("dump -R wrote no {img}"));
        }
    }
    kill_and_reap(w.pid);
}

#[test]
fn dump_leave_stopped() {
    let Some(t) = Test::new("leave_stopped") else {
        return;
    };
    let w = t.start_workload();
    t.dump(w.pid, &["-s"]);
    if !wait_for(Duration::from_secs(3), || proc_state(w.pid) == Some('T')) {
        t.fail(&format!(
            "after dump -s the process should be stopped (T): {}",
            describe(w.pid)
        ));
    }
    let frozen = w.progress();
    std::thread::sleep(Duration::from_millis(300));
    if w.progress() != frozen {
        t.fail(&format!(
            "stopped process still counts: {frozen:?} -> {:?}",
            w.progress()
        ));
    }
    if tracer_pid(w.pid) != Some(0) {
        t.fail(&format!(
            "after dump -s the process is still traced: {}",
            describe(w.pid)
        ));
    }
    signal(w.pid, libc::SIGCONT).expect("SIGCONT");
    t.assert_running_untouched(w.pid, "after dump -s and SIGCONT");
    t.assert_progressing(&w, "after dump -s and SIGCONT");
    t.workload_check(&w, "after dump -s and SIGCONT");
    kill_and_reap(w.pid);
}

/// Without `-d`, criu restore waits and reports how the process ended.
#[test]
fn foreground_restore_reports_sigterm() {
    let Some(t) = Test::new("foreground_sigterm") else {
        return;
    };
    let w = t.start_workload();
    t.dump(w.pid, &[]);
    reap_dumped(&t, w.pid);

    let images = t.images();
    let mut restore = t.spawn_criu(&[
        "restore",
        "-D",
        images.to_str().unwrap(),
        "-o",
        "restore.log",
        "-v4",
    ]);
    t.track(w.pid);
    let up = restore.wait_while_running(Duration::from_secs(10), || {
        is_alive(w.pid) && tracer_pid(w.pid) == Some(0)
    }) && {
        let p = w.progress().unwrap_or(0);
        restore.wait_while_running(Duration::from_secs(5), || w.progress().unwrap_or(0) > p)
    };
    if !up {
        let run = t.wait_criu(restore, Duration::from_secs(1));
        t.fail(&format!(
            "restored workload not running (criu exit {}): {}",
            run.code(),
            describe(w.pid)
        ));
    }
    signal(w.pid, libc::SIGTERM).expect("SIGTERM");
    let run = t.wait_criu(restore, Duration::from_secs(20));
    if run.code() != 128 + libc::SIGTERM {
        t.fail(&format!(
            "criu restore should exit 143 (128+SIGTERM), got {}",
            run.code()
        ));
    }
    if !wait_for(Duration::from_secs(5), || !is_alive(w.pid)) {
        t.fail(&format!(
            "workload still alive after SIGTERM: {}",
            describe(w.pid)
        ));
    }
}
