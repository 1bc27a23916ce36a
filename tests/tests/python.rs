//! A python3 program with a random token and a counter in memory: after a
//! detached restore it has the same token and the counter goes on.

use criu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PROGRAM: &str = r#"
import os, secrets, sys, time
path = sys.argv[1]
token = secrets.token_hex(16)
counter = 0
while True:
    counter += 1
    with open(path + ".tmp", "w") as f:
        f.write(f"{token} {counter}\n")
    os.replace(path + ".tmp", path)
    time.sleep(0.05)
"#;

fn state(path: &Path) -> Option<(String, u64)> {
    let text = read(path)?;
    let mut it = text.split_whitespace();
    let token = it.next()?.to_owned();
    let counter = it.next()?.parse().ok()?;
    Some((token, counter))
}

#[test]
fn python_keeps_token_and_counter() {
    let Some(t) = Test::new("python") else { return };
    let file = t.work().join("state.txt");
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(PROGRAM).arg(&file))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        state(&file).is_some_and(|(_, c)| c >= 5)
    }) {
        t.fail(&format!(
            "python3 did not start counting: {}",
            describe(pid)
        ));
    }

    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    let Some((token, at_dump)) = state(&file) else {
        t.fail("no state file after the dump")
    };

    t.restore_detached(pid, &[]);
    let mut seen = None;
    if !wait_for(Duration::from_secs(10), || {
        seen = state(&file);
        seen.as_ref().is_some_and(|(_, c)| *c != at_dump)
    }) {
        t.fail(&format!(
            "restored python3 does not write (still {token} {at_dump}): {}",
            describe(pid)
        ));
    }
    let (new_token, next) = seen.unwrap();
    if new_token != token {
        t.fail(&format!(
            "token changed across restore: {token} -> {new_token} (process restarted?)"
        ));
    }
    if next <= at_dump || next > at_dump + 40 {
        t.fail(&format!(
            "counter went {at_dump} -> {next} across restore; it should continue"
        ));
    }
    kill_and_reap(pid);
}
