//! A python3 program with four threads, each incrementing its own counter,
//! and a main thread writing all counters to a file: after a detached
//! restore the process has the same PID and thread IDs, and every counter
//! goes on from where it was.

use criu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PROGRAM: &str = r#"
import os, sys, threading, time
path = sys.argv[1]
counters = [0] * 4
def work(i):
    while True:
        counters[i] += 1
        time.sleep(0.01)
for i in range(4):
    threading.Thread(target=work, args=(i,), daemon=True).start()
while True:
    with open(path + ".tmp", "w") as f:
        f.write(" ".join(map(str, counters)) + "\n")
    os.replace(path + ".tmp", path)
    time.sleep(0.05)
"#;

fn counters(path: &Path) -> Option<Vec<u64>> {
    let v: Vec<u64> = read(path)?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 4).then_some(v)
}

fn tids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

#[test]
fn threads_keep_their_ids_and_counters() {
    let Some(t) = Test::new("threads") else {
        return;
    };
    let file = t.work().join("counters.txt");
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(PROGRAM).arg(&file))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        counters(&file).is_some_and(|c| c.iter().all(|&x| x >= 5)) && tids(pid).len() == 5
    }) {
        t.fail(&format!("python3 threads did not start: {}", describe(pid)));
    }
    let before = tids(pid);

    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    let Some(at_dump) = counters(&file) else {
        t.fail("no counters after the dump")
    };

    t.restore_detached(pid, &[]);
    let after = tids(pid);
    if after != before {
        t.fail(&format!("thread IDs changed: {before:?} -> {after:?}"));
    }
    let mut seen = None;
    if !wait_for(Duration::from_secs(10), || {
        seen = counters(&file);
        seen.as_ref()
            .is_some_and(|c| c.iter().zip(&at_dump).all(|(n, d)| n > d))
    }) {
        t.fail(&format!(
            "not every counter goes on after restore ({at_dump:?} -> {seen:?}): {}",
            describe(pid)
        ));
    }
    for (n, d) in seen.unwrap().iter().zip(&at_dump) {
        if *n > d + 400 {
            t.fail(&format!("counter jumped {d} -> {n}: restarted?"));
        }
    }
    kill_and_reap(pid);
}
