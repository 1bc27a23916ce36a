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

/// Signals a process left at their default action come back exactly so:
/// handler `SIG_DFL` and no flags (a stub set up through glibc carried
/// `SA_RESTORER` and a restorer address into the restored process), real-
/// time signals included. Read from inside with a raw rt_sigaction(2).
#[test]
fn default_signal_actions_carry_no_flags() {
    let Some(t) = Test::new("default_sigactions") else {
        return;
    };
    let out = t.work().join("actions");
    let trigger = t.work().join("go");
    let program = format!(
        "import ctypes, os, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def actions():\n\
         \x20   bad = []\n\
         \x20   for sig in [1, 3, 10, 12, 15, 20, 32, 33, 34, 40, 50, 64]:\n\
         \x20       sa = (ctypes.c_uint64 * 4)()\n\
         \x20       assert libc.syscall(13, sig, None, sa, 8) == 0\n\
         \x20       if sa[0] == 0 and sa[1] != 0:\n\
         \x20           bad.append(f'{{sig}}:{{sa[1]:#x}}')\n\
         \x20   return ' '.join(bad) or 'clean'\n\
         open({out:?} + '.tmp', 'w').write(actions())\n\
         os.rename({out:?} + '.tmp', {out:?})\n\
         while not os.path.exists({trigger:?}): time.sleep(0.02)\n\
         open({out:?} + '.tmp', 'w').write(actions())\n\
         os.rename({out:?} + '.tmp', {out:?} + '.after')\n\
         while True: time.sleep(1)\n",
        out = out.display().to_string(),
        trigger = trigger.display().to_string(),
    );
    let pid = t
        .spawn_target(std::process::Command::new("python3").args(["-c", &program]))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || out.exists()) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    let before = read(&out).unwrap_or_default();
    if before != "clean" {
        t.fail(&format!(
            "set-up: default actions with flags before the dump: {before}"
        ));
    }
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    std::fs::write(&trigger, b"").unwrap();
    let after_path = t.work().join("actions.after");
    if !wait_for(Duration::from_secs(20), || after_path.exists()) {
        t.fail(&format!(
            "restored target did not answer: {}",
            describe(pid)
        ));
    }
    let after = read(&after_path).unwrap_or_default();
    if after != "clean" {
        t.fail(&format!(
            "default actions with flags after restore (signal:flags): {after}"
        ));
    }
    kill_and_reap(pid);
}
