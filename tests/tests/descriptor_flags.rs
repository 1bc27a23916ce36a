//! The close-on-exec flag of every descriptor comes back, whatever mix of
//! flags and numbers a process has: runs of descriptors with and without
//! `FD_CLOEXEC`, more than one batch of them (restore receives up to 253
//! descriptors per message) and numbers with holes below them. Checked from
//! outside, in /proc/PID/fdinfo (the `flags:` field shows `O_CLOEXEC`).

use criu_tests::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// Opens its descriptors, then writes "ready" and sleeps.
const PROGRAM: &str = r#"
import os, sys, time
ready = sys.argv[1]
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(700)]
# os.open makes close-on-exec descriptors: clear it on a pattern with
# long runs of each kind (mostly cleared, then mostly set) and singles.
for i, fd in enumerate(fds):
    if i < 260 or (i % 7 == 0 and i < 500):
        os.set_inheritable(fd, True)
# Holes: close some, and move some far up (dup2 makes inheritable ones).
for fd in fds[600:640]:
    os.close(fd)
for k, fd in enumerate(fds[640:660]):
    os.dup2(fd, 900 + 3 * k, inheritable=(k % 2 == 0))
    os.close(fd)
with open(ready, "w") as f:
    f.write("ready")
while True:
    time.sleep(1)
"#;

/// Descriptor number -> whether it is close-on-exec, from fdinfo.
fn cloexec_flags(pid: i32) -> BTreeMap<i32, bool> {
    let mut out = BTreeMap::new();
    for (fd, _) in fd_links(pid) {
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let Some(flags) = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
        else {
            continue;
        };
        out.insert(fd, flags & i64::from(libc::O_CLOEXEC) != 0);
    }
    out
}

#[test]
fn close_on_exec_of_every_descriptor_comes_back() {
    let Some(t) = Test::new("descriptor_flags") else {
        return;
    };
    let ready = t.work().join("ready");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PROGRAM).arg(&ready);
    let pid = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || ready.exists()) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    let before = cloexec_flags(pid);
    let set = before.values().filter(|&&c| c).count();
    if before.len() < 660 || set < 100 || before.len() - set < 100 {
        t.fail(&format!(
            "target has {} descriptors, {set} close-on-exec: not the mix wanted",
            before.len()
        ));
    }
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    let after = cloexec_flags(pid);
    if after != before {
        let differ: Vec<_> = before
            .iter()
            .filter(|(fd, c)| after.get(fd) != Some(c))
            .map(|(fd, c)| (*fd, *c, after.get(fd).copied()))
            .take(10)
            .collect();
        let extra: Vec<_> = after
            .keys()
            .filter(|fd| !before.contains_key(fd))
            .take(10)
            .collect();
        t.fail(&format!(
            "descriptors differ after restore ({} before, {} after); (fd, cloexec before, after): {differ:?}; only after: {extra:?}",
            before.len(),
            after.len()
        ));
    }
    if !is_alive(pid) {
        t.fail("restored target is not running");
    }
    kill_and_reap(pid);
}
