//! A descriptor of a kind criu cannot save makes the dump fail with an
//! error naming the PID, the descriptor number and the kind, and the
//! process runs on as before: io_uring, a BPF map, a netlink socket and a
//! character device other than the ones criu reopens; a terminal or a
//! deleted file that is only in flight in a UNIX socket's queue.

use criu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Opens one object of the kind `argv[1]` at fd 42, then counts in `state`
/// every 50 ms.
const PROGRAM: &str = r#"
import ctypes, os, socket, struct, sys, time
kind, state = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
if kind == "io_uring":
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 4, params)
elif kind == "bpf-map":
    attr = ctypes.create_string_buffer(struct.pack("IIIII", 2, 4, 4, 1, 0) + b"\0" * 100)
    fd = libc.syscall(321, 0, attr, 120)
elif kind == "netlink":
    fd = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).detach()
else:
    fd = os.open("/dev/kmsg", os.O_RDONLY)
if fd < 0:
    open(state, "w").write(f"skip errno {ctypes.get_errno()}")
    sys.exit(3)
os.dup2(fd, 42)
os.close(fd)
n = 0
while True:
    n += 1
    with open(state + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(state + ".tmp", state)
    time.sleep(0.05)
"#;

fn count(p: &Path) -> u64 {
    read_number(p).unwrap_or(0)
}

/// The target's counter in `st` still moves.
fn still_counting(t: &Test, st: &Path) {
    let n = count(st);
    if !wait_for(Duration::from_secs(5), || count(st) > n) {
        t.fail("the target stopped counting after the refused dump");
    }
}

fn refused(kind: &str, needle: &str) {
    let Some(t) = Test::new(&format!("unsupported_{}", kind.replace('-', "_"))) else {
        return;
    };
    let st = t.work().join("state");
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(PROGRAM)
                .arg(kind)
                .arg(&st),
        )
        .id() as i32;
    let skipped = || read(&st).is_some_and(|s| s.starts_with("skip"));
    if !wait_for(Duration::from_secs(20), || count(&st) >= 2 || skipped()) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    if skipped() {
        eprintln!(
            "unsupported_{kind}: skipped: the kernel refused to make one ({})",
            read(&st).unwrap_or_default()
        );
        return;
    }
    t.dump_refused(pid, &[], &[&format!("pid {pid} fd 42"), needle]);
    still_counting(&t, &st);
    kill_and_reap(pid);
}

#[test]
fn io_uring_is_refused() {
    refused("io_uring", "io_uring");
}

#[test]
fn bpf_map_is_refused() {
    refused("bpf-map", "bpf");
}

#[test]
fn netlink_socket_is_refused() {
    refused("netlink", "socket");
}

#[test]
fn other_character_device_is_refused() {
    refused("kmsg", "/dev/kmsg");
}

/// Sends a pty master or a deleted file over a socketpair and closes its
/// own descriptor, so it is only in flight, then counts in `state`.
const IN_FLIGHT: &str = r#"
import array, os, pty, socket, sys, time
kind, state, d = sys.argv[1], sys.argv[2], sys.argv[3]
a, b = socket.socketpair()
if kind == "pty":
    m, s = pty.openpty()
    fd = m
else:
    fd = os.open(os.path.join(d, "gone"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"data")
    os.unlink(os.path.join(d, "gone"))
a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
os.close(fd)
n = 0
while True:
    n += 1
    with open(state + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(state + ".tmp", state)
    time.sleep(0.05)
"#;

fn in_flight_refused(kind: &str, needle: &str) {
    let Some(t) = Test::new(&format!("in_flight_{kind}")) else {
        return;
    };
    let st = t.work().join("state");
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(IN_FLIGHT)
                .arg(kind)
                .arg(&st)
                .arg(t.work()),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || count(&st) >= 2) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    let images = t.images();
    t.criu_err(
        &[
            "dump",
            "-t",
            &pid.to_string(),
            "-D",
            images.to_str().unwrap(),
        ],
        &["in flight in socket:[", needle],
    );
    t.assert_running_untouched(pid, "after the refused dump");
    let n = count(&st);
    if !wait_for(Duration::from_secs(5), || count(&st) > n) {
        t.fail("the target stopped counting after the refused dump");
    }
    kill_and_reap(pid);
}

#[test]
fn pty_only_in_flight_is_refused() {
    in_flight_refused("pty", "a terminal");
}

#[test]
fn deleted_file_only_in_flight_is_refused() {
    in_flight_refused("ghost", "a deleted file");
}
