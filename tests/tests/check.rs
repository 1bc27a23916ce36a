//! `criu check`: the output format ("Looks good." or one `missing:` line
//! per feature), `--feature`, `--ms`, `--all`, and that it leaves no probe
//! process behind.

use criu_tests::*;

/// Checks the output of a `criu check` run: exit 0 with "Looks good." as
/// the last line, or exit 1 with only `missing:` lines, an optional helper
/// line and a summary.
fn check_format(t: &Test, run: &CriuRun) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    match run.code() {
        0 => {
            if lines.last() != Some(&"Looks good.") {
                t.fail(&format!(
                    "exit 0 but the last line is not \"Looks good.\": {lines:?}"
                ));
            }
            if lines.iter().any(|l| l.starts_with("missing:")) {
                t.fail("exit 0 with missing features");
            }
        }
        1 => {
            let summary = lines.last().copied().unwrap_or("");
            if !summary.ends_with("checked features missing.") {
                t.fail(&format!("no summary line: {lines:?}"));
            }
            let missing = lines.iter().filter(|l| l.starts_with("missing: ")).count();
            if missing == 0 {
                t.fail("exit 1 without a missing: line");
            }
            for l in &lines[..lines.len() - 1] {
                let ok = (l.starts_with("missing: ") && l.contains("; without it: "))
                    || l.contains("helper");
                if !ok {
                    t.fail(&format!("unexpected line {l:?}"));
                }
            }
        }
        c => t.fail(&format!("criu check exited {c}")),
    }
}

#[test]
fn check_reports_in_the_documented_format() {
    let Some(t) = Test::new("check") else {
        return;
    };
    let before = children_of_self();
    for args in [&["check"][..], &["check", "--ms"], &["check", "--all"]] {
        let run = t.criu(args);
        check_format(&t, &run);
        if run.stderr.contains("panicked") {
            t.fail("criu check panicked");
        }
    }
    // As root on a current kernel everything dump and restore use is there.
    let run = t.criu(&["check"]);
    if run.code() != 0 {
        eprintln!("note: this kernel lacks features:\n{}", run.stdout);
    }
    // No probe child or stub is left behind (criu runs of the other test
    // in this binary come and go, hence the wait).
    let leaked = || -> Vec<i32> {
        children_of_self()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect()
    };
    if !wait_for(std::time::Duration::from_secs(5), || leaked().is_empty()) {
        let l: Vec<String> = leaked().into_iter().map(describe).collect();
        t.fail(&format!("criu check left processes behind: {l:#?}"));
    }
}

#[test]
fn check_one_feature_and_list() {
    let Some(t) = Test::new("check_feature") else {
        return;
    };
    let list = t.criu_ok(&["check", "--feature", "list"]).stdout;
    for name in [
        "ptrace_seize",
        "xstate",
        "pidfd_open",
        "pidfd_getfd",
        "clone3_set_tid",
        "prctl_mm_map",
        "process_vm_readv",
        "map_files",
        "pagemap",
        "vdso",
        "vdso_mremap",
        "rseq_config",
        "memfd",
        "userfaultfd",
        "tcp_repair",
        "namespaces",
        "seccomp",
        "timer_restore_ids",
    ] {
        if !list.lines().any(|l| l.starts_with(name)) {
            t.fail(&format!("--feature list lacks {name}:\n{list}"));
        }
    }
    for name in ["memfd", "ptrace_seize", "vdso_mremap", "clone3_set_tid"] {
        let run = t.criu(&["check", "--feature", name]);
        check_format(&t, &run);
        if run.code() == 0 && !run.stdout.contains(&format!("{name} is supported.")) {
            t.fail(&format!("--feature {name}: {}", run.stdout));
        }
    }
    t.criu_err(
        &["check", "--feature", "warp_drive"],
        &["unknown feature", "warp_drive"],
    );
}

/// Processes whose parent is this test process (the subreaper adopts
/// orphans, so a leaked probe child would show up here).
fn children_of_self() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| ppid(p) == Some(me) && is_alive(p))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Run by a user with the helper installed setuid root, check reports the
/// install (path, owner, mode) and the caller's uid.
#[test]
fn check_reports_a_setuid_install() {
    let Some(t) = Test::new("check_setuid") else {
        return;
    };
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("check_setuid: skipped: setpriv not installed");
        return;
    }
    let helper = t.setuid_helper();
    let env = format!("CRIU_HELPER={}", helper.display());
    let wrapper = [
        "env",
        env.as_str(),
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let run = t.wait_criu(t.spawn_criu_wrapped(&wrapper, &["check"]), CRIU_TIMEOUT);
    check_format(&t, &run);
    let want = format!(
        "setuid mode: helper {} (owner uid 0 gid 0, mode 4755, setuid root); caller uid 65534",
        helper.display()
    );
    if !run.stdout.contains(&want) {
        t.fail(&format!("no setuid report {want:?} in:\n{}", run.stdout));
    }
}
