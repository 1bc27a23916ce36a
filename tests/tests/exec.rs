//! `criu exec -t PID SYSCALL [ARG ...]` on a running `criu-workload`: the
//! call runs in the target, its result is printed, and the target goes on
//! running untraced with its state intact; bad requests are refused with a
//! clear error.

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

fn exec(t: &Test, pid: i32, call: &[&str]) -> String {
    let p = pid.to_string();
    let mut args = vec!["exec", "-t", &p];
    args.extend_from_slice(call);
    t.criu_ok(&args).stdout.trim().to_string()
}

#[test]
fn exec_runs_calls_in_the_workload() {
    let Some(t) = Test::new("exec_workload") else {
        return;
    };
    let w = t.start_workload();
    let maps_before = maps(w.pid);

    let got = exec(&t, w.pid, &["getpid"]);
    if got != w.pid.to_string() {
        t.fail(&format!("exec getpid printed {got:?}, want {}", w.pid));
    }
    // By number, too (39 is getpid on x86-64).
    if exec(&t, w.pid, &["39"]) != w.pid.to_string() {
        t.fail("exec 39 did not run getpid");
    }

    let out = exec(&t, w.pid, &["open", "&/etc/hostname", "0"]);
    let fd: i32 = out
        .parse()
        .unwrap_or_else(|_| t.fail(&format!("exec open printed {out:?}")));
    if fd < 0 {
        t.fail(&format!("open failed in the task: {out}"));
    }
    let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", w.pid)).ok();
    if link.as_deref() != Some(std::path::Path::new("/etc/hostname")) {
        t.fail(&format!("fd {fd} of the target points to {link:?}"));
    }
    // The scratch area for the string is gone again.
    if maps(w.pid) != maps_before {
        t.fail(&format!(
            "exec left the memory layout changed:\n before {maps_before:#?}\n after {:#?}",
            maps(w.pid)
        ));
    }
    if exec(&t, w.pid, &["close", &fd.to_string()]) != "0" {
        t.fail("closing the opened fd failed");
    }
    // An error of the call itself is printed as -errno (NAME), exit 0.
    let out = exec(&t, w.pid, &["close", "12345"]);
    if out != "-9 (EBADF)" {
        t.fail(&format!(
            "close of a bad fd printed {out:?}, want -9 (EBADF)"
        ));
    }
    let out = exec(&t, w.pid, &["open", "&/no/such/file", "0"]);
    if out != "-2 (ENOENT)" {
        t.fail(&format!("open of a missing file printed {out:?}"));
    }
    // Hex and negative numbers: lseek(42, 0, SEEK_CUR) on /dev/null is 0;
    // an fd of -1 is EBADF.
    if exec(&t, w.pid, &["lseek", "0x2a", "0", "1"]) != "0" {
        t.fail("lseek with a hex fd failed");
    }
    if exec(&t, w.pid, &["close", "-1"]) != "-9 (EBADF)" {
        t.fail("close(-1) should be EBADF");
    }

    t.assert_running_untouched(w.pid, "after exec");
    t.assert_progressing(&w, "after exec");
    t.workload_check(&w, "after exec");
    kill_and_reap(w.pid);
}

#[test]
fn exec_refusals_leave_the_target_alone() {
    let Some(t) = Test::new("exec_refusals") else {
        return;
    };
    let w = t.start_workload();
    let p = w.pid.to_string();
    t.criu_err(
        &["exec", "-t", &p, "getpidd"],
        &["unknown system call", "getpidd"],
    );
    t.criu_err(
        &["exec", "-t", &p, "getpid", "twelve"],
        &["twelve", "neither a number"],
    );
    t.criu_err(
        &[
            "exec", "-t", &p, "getpid", "1", "2", "3", "4", "5", "6", "7",
        ],
        &["at most 6"],
    );

    // A pid that does not exist.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let gone = child.id() as i32;
    child.wait().expect("wait true");
    t.criu_err(
        &["exec", "-t", &gone.to_string(), "getpid"],
        &[&format!("pid {gone} does not exist")],
    );

    // A zombie runs no calls.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let zombie = child.id() as i32;
    if !wait_for(Duration::from_secs(5), || proc_state(zombie) == Some('Z')) {
        t.fail("the child did not become a zombie");
    }
    t.criu_err(&["exec", "-t", &zombie.to_string(), "getpid"], &["zombie"]);
    let _ = child.wait();

    t.assert_running_untouched(w.pid, "after refused execs");
    t.assert_progressing(&w, "after refused execs");
    t.workload_check(&w, "after refused execs");
    kill_and_reap(w.pid);
}

/// With the helper installed setuid root, an ordinary user may exec in
/// their own process and is refused (by the helper) for anyone else's; the
/// refused target is left running and untraced.
#[test]
fn exec_as_a_user_with_a_setuid_helper() {
    let Some(t) = Test::new("exec_setuid") else {
        return;
    };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("exec_setuid: skipped: setpriv not installed");
        return;
    }
    let helper = t.setuid_helper();
    let env = format!("CRIU_HELPER={}", helper.display());
    let as_nobody = [
        "env",
        env.as_str(),
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let run_as_nobody =
        |args: &[&str]| t.wait_criu(t.spawn_criu_wrapped(&as_nobody, args), CRIU_TIMEOUT);

    let mine = t
        .spawn_target(Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "1000",
        ]))
        .id() as i32;
    if !wait_for(Duration::from_secs(5), || {
        comm(mine).as_deref() == Some("sleep")
    }) {
        t.fail("the user's sleep did not start");
    }
    let run = run_as_nobody(&["exec", "-t", &mine.to_string(), "getpid"]);
    if run.code() != 0 || run.stdout.trim() != mine.to_string() {
        // A mount with nosuid makes the helper run unprivileged: say so.
        t.fail(&format!(
            "exec as the owner through the setuid helper should print {mine}: {}",
            run.report()
        ));
    }
    t.assert_running_untouched(mine, "after exec as its owner");

    let roots = t.spawn_target(Command::new("sleep").arg("1000")).id() as i32;
    if !wait_for(Duration::from_secs(5), || {
        comm(roots).as_deref() == Some("sleep")
    }) {
        t.fail("root's sleep did not start");
    }
    let run = run_as_nobody(&["exec", "-t", &roots.to_string(), "getpid"]);
    t.check_err(
        &run,
        &[&format!("pid {roots}"), "uid 0 differs from yours (65534)"],
    );
    t.assert_running_untouched(roots, "after the refused exec");
    kill_and_reap(mine);
    kill_and_reap(roots);
}
