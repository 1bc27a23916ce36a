//! The seccomp filter the helper installs before reading its first frame
//! really confines the running helper: a system call outside the policy,
//! made inside a live `criu-helper` (injected with `criu exec` by a second,
//! root criu — no hidden trigger exists in the helper), kills it with
//! SIGSYS; a call inside the policy does not.

use criu_tests::*;
use shared_ipc::{seqpacket_pair, Channel, Request, Response, HELLO_MAGIC, PROTOCOL_VERSION};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A helper serving on a socketpair, past its handshake (so its filter is
/// installed and it waits in recvmsg for the next frame).
fn start_helper() -> (Child, Channel<Request, Response>) {
    let (ours, theirs) = seqpacket_pair().expect("socketpair");
    let mut cmd = Command::new(&bins().helper);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    criu_frontend::sys::pass_fd_as(&mut cmd, theirs, shared_ipc::HELPER_CHANNEL_FD);
    let child = cmd.spawn().expect("start criu-helper");
    drop(cmd);
    let mut ch = Channel::new(ours);
    ch.send(
        &Request::Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
        },
        &[],
    )
    .expect("send hello");
    let (resp, _) = ch.recv().expect("hello answer");
    assert!(matches!(resp, Response::Hello { .. }), "{resp:?}");
    (child, ch)
}

fn seccomp_mode(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_string())
}

#[test]
fn a_call_outside_the_policy_kills_the_running_helper() {
    let Some(t) = Test::new("seccomp_kills_helper") else {
        return;
    };
    let (mut helper, _ch) = start_helper();
    let hpid = helper.id() as i32;
    assert_eq!(
        seccomp_mode(hpid).as_deref(),
        Some("2"),
        "the helper runs without a seccomp filter"
    );

    // Inside the policy: getpid is allowed, the helper lives on.
    let hp = hpid.to_string();
    let run = t.criu_ok(&["exec", "-t", &hp, "getpid"]);
    assert!(
        run.stdout.contains(&hp),
        "getpid in the helper should return its pid: {}",
        run.stdout
    );
    assert!(
        helper.try_wait().expect("try_wait").is_none(),
        "the helper died of an allowed call"
    );

    // Outside: socket(AF_INET, SOCK_STREAM, 0) is not in the policy.
    let _ = t.criu(&["exec", "-t", &hp, "socket", "2", "1", "0"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = helper.try_wait().expect("try_wait") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = helper.kill();
            t.fail("the helper survived a system call outside its seccomp policy");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "the helper should die of SIGSYS, got {status:?}"
    );
}
