//! A bash loop of builtins appending 1, 2, 3, ... to a file: after a dump and
//! a detached restore the numbers continue where they stopped.

use criu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = r#"i=0; while :; do i=$((i+1)); echo $i >> "$1"; x=0; while ((x<3000)); do ((x++)); done; done"#;

/// The complete lines of the file as numbers.
fn numbers(path: &Path) -> Vec<u64> {
    let text = read(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

fn check_sequence(t: &Test, nums: &[u64], what: &str) {
    if let Some(i) = (0..nums.len()).find(|&i| nums[i] != i as u64 + 1) {
        let from = i.saturating_sub(3);
        t.fail(&format!(
            "{what}: line {} is {} instead of {} (lines {}..: {:?})",
            i + 1,
            nums[i],
            i + 1,
            from + 1,
            &nums[from..(i + 4).min(nums.len())]
        ));
    }
}

#[test]
fn bash_loop_continues_counting_after_restore() {
    let Some(t) = Test::new("bash_loop") else {
        return;
    };
    let file = t.work().join("count.txt");
    let pid = t
        .spawn_target(Command::new("bash").args(["-c", SCRIPT, "bash"]).arg(&file))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || numbers(&file).len() >= 5) {
        t.fail(&format!("bash wrote fewer than 5 lines: {}", describe(pid)));
    }

    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    let at_dump = numbers(&file);
    check_sequence(&t, &at_dump, "before restore");
    let n = at_dump.len() as u64;

    let pidfile = t.work().join("restored.pid");
    t.restore_detached(pid, &["--pidfile", pidfile.to_str().unwrap()]);
    if comm(pid).as_deref() != Some("bash") {
        t.fail(&format!(
            "pid {pid} after restore is not bash: {}",
            describe(pid)
        ));
    }
    if !wait_for(Duration::from_secs(20), || {
        numbers(&file).len() as u64 >= n + 5
    }) {
        t.fail(&format!(
            "restored bash does not append (stuck at {} lines, {n} at dump)",
            numbers(&file).len()
        ));
    }
    let after = numbers(&file);
    check_sequence(&t, &after, &format!("after restore (dumped at {n})"));
    kill_and_reap(pid);
}
