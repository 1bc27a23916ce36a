//! `bash -c 'sleep 1000 | cat'`, checked from outside after restore: the
//! same PIDs, parents, session and process group, the pipe between sleep
//! and cat is one pipe again, and cat still copies what arrives
//! in the pipe to its output file.

use criu_tests::*;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

/// The `pipe:[INO]` link of a descriptor.
fn link(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn children(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = read(std::path::Path::new(&format!(
        "/proc/{pid}/task/{pid}/children"
    )))
    .unwrap_or_default()
    .split_whitespace()
    .filter_map(|w| w.parse().ok())
    .collect();
    v.sort_unstable();
    v
}

#[test]
fn sleep_cat_pipeline_comes_back_whole() {
    pipeline("pipeline", true);
}

/// The pipeline started the way a script starts it: bash stays in the
/// caller's session and process group (no job control), so sleep and cat
/// are in a group whose leader is outside the tree. It was dumped (and
/// killed), then its restore refused "process group ... has no leader in
/// the checkpoint". Restored, bash joins criu's group and session (here the
/// test's, the same as before) and its children stay in bash's group.
#[test]
fn pipeline_in_the_callers_group_comes_back_whole() {
    pipeline("pipeline-callers-group", false);
}

fn pipeline(name: &str, new_session: bool) {
    let Some(t) = Test::new(name) else {
        return;
    };
    let out = t.work().join("out");
    // The harness gives targets /dev/null as stdout: the shell sends its
    // output to a file first, then runs the pipeline.
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("exec > {}; sleep 1000 | cat", out.display()));
    let bash = if new_session {
        t.spawn_target(&mut cmd)
    } else {
        t.spawn_target_in_our_session(&mut cmd)
    }
    .id() as i32;
    // SAFETY: getpgrp has no preconditions.
    let ours = unsafe { libc::getpgrp() };
    if (pgid(bash) == Some(bash)) != new_session || (!new_session && pgid(bash) != Some(ours)) {
        t.fail(&format!(
            "bash is not where it was started (new session: {new_session}): {}",
            describe(bash)
        ));
    }
    let mut kids = Vec::new();
    if !wait_for(Duration::from_secs(10), || {
        kids = children(bash);
        kids.len() == 2
            && kids
                .iter()
                .all(|&k| comm(k).is_some_and(|c| c == "sleep" || c == "cat"))
    }) {
        t.fail(&format!("the pipeline did not start: {}", describe(bash)));
    }
    for &k in &kids {
        t.track(k);
    }
    let sleep = *kids
        .iter()
        .find(|&&k| comm(k).as_deref() == Some("sleep"))
        .unwrap();
    let cat = *kids
        .iter()
        .find(|&&k| comm(k).as_deref() == Some("cat"))
        .unwrap();
    let ids = |p: i32| (ppid(p), pgid(p), sid(p));
    let before: Vec<_> = [bash, sleep, cat].iter().map(|&p| ids(p)).collect();

    t.dump(bash, &[]);
    reap_dumped(&t, bash);
    for &k in &kids {
        let _ = reap(k, Duration::from_secs(10));
    }
    t.restore_detached(bash, &[]);

    let after: Vec<_> = [bash, sleep, cat].iter().map(|&p| ids(p)).collect();
    if after != before || children(bash) != kids {
        t.fail(&format!(
            "after restore (ppid, pgid, sid) of bash, sleep, cat are {after:?}, children {:?}; before {before:?}, {kids:?}",
            children(bash)
        ));
    }
    if comm(sleep).as_deref() != Some("sleep") || comm(cat).as_deref() != Some("cat") {
        t.fail(&format!("wrong programs after restore: {}", describe(bash)));
    }
    let (w, r) = (link(sleep, 1), link(cat, 0));
    if !w.starts_with("pipe:") || w != r {
        t.fail(&format!(
            "sleep's stdout ({w}) and cat's stdin ({r}) are not one pipe after restore"
        ));
    }
    // cat still copies: write into its pipe from outside.
    let mut pipe = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{cat}/fd/0"))
        .expect("open cat's pipe for writing");
    pipe.write_all(b"through the pipe\n").unwrap();
    drop(pipe);
    if !wait_for(Duration::from_secs(5), || {
        read(&out).is_some_and(|s| s == "through the pipe\n")
    }) {
        t.fail(&format!(
            "cat did not copy after restore: output {:?}",
            read(&out)
        ));
    }
    for &k in &kids {
        kill_and_reap(k);
    }
    kill_and_reap(bash);
}
