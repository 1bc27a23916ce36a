//! UNIX domain sockets across dump and restore, checked from inside the
//! restored python3 processes: a stream socketpair shared by parent and
//! child (one description) with data queued both ways, a listener bound to
//! a path with an accepted connection and a request queued, a listener
//! with a connection not accepted yet, a datagram socket bound to a
//! relative path with datagrams queued from a connected sender, a
//! seqpacket pair carrying a file (with its offset) and a socket in flight
//! (`SCM_RIGHTS`, the senders' copies closed), a half shut down pair, an
//! abstract name, `SO_PASSCRED` and `O_NONBLOCK`. Then the refusals: a
//! peer outside the tree, and `--ext-unix-sk` reconnecting to it.

use criu_tests::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Sets everything up, writes `ready` ("CHILD A B" with the fds of the
/// shared pair), then waits for `go` and checks; the parent writes
/// `result`, the child `child-result`: "ok" or the failed checks.
const PROGRAM: &str = r#"
import array, os, socket, sys, time
w = sys.argv[1]
U = socket.AF_UNIX
def put(name, text):
    with open(w + "/" + name + ".tmp", "w") as f:
        f.write(text)
    os.replace(w + "/" + name + ".tmp", w + "/" + name)

a, b = socket.socketpair()
a.send(b"to-b-1"); b.send(b"to-a-1")
a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
b.setblocking(False)

lpath = w + "/listen.sock"
L = socket.socket(U, socket.SOCK_STREAM); L.bind(lpath); L.listen(5)
cl = socket.socket(U, socket.SOCK_STREAM); cl.connect(lpath)
acc, _ = L.accept()
cl.send(b"hello server")
L2 = socket.socket(U, socket.SOCK_STREAM); L2.bind(w + "/pending.sock"); L2.listen(2)
pc = socket.socket(U, socket.SOCK_STREAM); pc.connect(w + "/pending.sock")

D = socket.socket(U, socket.SOCK_DGRAM); D.bind("dgram.sock")
ds = socket.socket(U, socket.SOCK_DGRAM); ds.connect("dgram.sock")
ds.send(b"dg1"); ds.send(b"dg2")

s1, s2 = socket.socketpair(U, socket.SOCK_SEQPACKET)
with open(w + "/inflight.txt", "w") as f:
    f.write("0123456789")
r = os.open(w + "/inflight.txt", os.O_RDONLY); os.lseek(r, 4, os.SEEK_SET)
socket.send_fds(s1, [b"fdmsg"], [r]); os.close(r)
x, y = socket.socketpair()
y.send(b"for-x")
socket.send_fds(s1, [b"sockmsg"], [x.fileno()]); x.close()

h1, h2 = socket.socketpair()
h1.send(b"last"); h1.shutdown(socket.SHUT_WR)

AB = socket.socket(U, socket.SOCK_DGRAM); AB.bind(b"\0criu-unix-test-" + str(os.getpid()).encode())

child = os.fork()
if child == 0:
    while not os.path.exists(w + "/go"):
        time.sleep(0.02)
    bad = []
    try:
        got = a.recv(100)
        if got != b"to-a-1": bad.append(f"child a.recv {got!r}")
        a.send(b"from-child")
    except Exception as e:
        bad.append(f"child: {e!r}")
    put("child-result", "ok" if not bad else "; ".join(bad))
    while True:
        time.sleep(1)

put("ready", f"{child} {a.fileno()} {b.fileno()}")
while not os.path.exists(w + "/go"):
    time.sleep(0.02)
bad = []
def check(what, got, want):
    if got != want: bad.append(f"{what}: got {got!r}, want {want!r}")
try:
    check("b queued", b.recv(6), b"to-b-1")
    check("b nonblocking", b.getblocking(), False)
    check("a passcred", a.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED), 1)
    b.setblocking(True); b.settimeout(5)
    check("from child", b.recv(100), b"from-child")
    check("accepted queue", acc.recv(100), b"hello server")
    check("accepted name", acc.getsockname(), lpath)
    check("client peer", cl.getpeername(), lpath)
    acc.send(b"reply"); check("client gets reply", cl.recv(100), b"reply")
    c2 = socket.socket(U, socket.SOCK_STREAM); c2.connect(lpath)
    n, _ = L.accept(); c2.send(b"new"); check("new connection", n.recv(10), b"new")
    pn, _ = L2.accept(); pn.send(b"late")
    check("connection accepted after restore", pc.recv(10), b"late")
    check("dgram 1", D.recv(100), b"dg1")
    check("dgram 2", D.recv(100), b"dg2")
    check("dgram name", D.getsockname(), "dgram.sock")
    ds.send(b"dg3"); check("dgram 3", D.recv(100), b"dg3")
    msg, fds, _, _ = socket.recv_fds(s2, 100, 4)
    check("fd message", msg, b"fdmsg")
    check("file in flight", os.read(fds[0], 100) if fds else None, b"456789")
    msg, fds, _, _ = socket.recv_fds(s2, 100, 4)
    check("socket message", msg, b"sockmsg")
    xs = socket.socket(fileno=fds[0]) if fds else None
    check("socket in flight queue", xs.recv(100) if xs else None, b"for-x")
    if xs: xs.send(b"back")
    check("socket in flight peer", y.recv(100), b"back")
    check("half shut queue", h2.recv(100), b"last")
    check("half shut eof", h2.recv(100), b"")
    try:
        h1.send(b"more"); bad.append("h1 could send after SHUT_WR")
    except BrokenPipeError:
        pass
    check("abstract name", AB.getsockname(), b"\0criu-unix-test-" + str(os.getpid()).encode())
except Exception as e:
    bad.append(f"exception: {e!r}")
put("result", "ok" if not bad else "; ".join(bad))
while True:
    time.sleep(1)
"#;

fn wait_file(t: &Test, path: &Path, pid: i32) -> String {
    if !wait_for(Duration::from_secs(20), || path.exists()) {
        t.fail(&format!(
            "no {} from the target: {}",
            path.display(),
            describe(pid)
        ));
    }
    read(path).unwrap_or_default()
}

#[test]
fn unix_sockets_survive_dump_and_restore() {
    let Some(t) = Test::new("unix_sockets") else {
        return;
    };
    let w = t.work();
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(PROGRAM)
                .arg(&w)
                .current_dir(&w),
        )
        .id() as i32;
    let ready = wait_file(&t, &w.join("ready"), pid);
    let v: Vec<i32> = ready
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let [child, fa, fb] = v[..] else {
        t.fail(&format!("bad ready file {ready:?}"))
    };
    t.track(child);
    if !same_description(pid, fa, child, fa) {
        t.fail("the socketpair is not shared before the dump");
    }

    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    let _ = reap(child, Duration::from_secs(10));
    let show = t.criu_ok(&["show", "-D", t.images().to_str().unwrap()]);
    for needle in [
        "stream socket:[",
        "listening",
        "seqpacket",
        "queue 2 messages",
    ] {
        if !show.stdout.contains(needle) {
            t.fail(&format!("criu show lacks {needle:?}:\n{}", show.stdout));
        }
    }

    t.restore_detached(pid, &[]);
    t.track(child);
    if !same_description(pid, fa, child, fa) || !same_description(pid, fb, child, fb) {
        t.fail(&format!(
            "after restore the socketpair is not one description in parent and child: {}",
            describe(pid)
        ));
    }
    std::fs::write(w.join("go"), "").unwrap();
    let res = wait_file(&t, &w.join("result"), pid);
    let cres = wait_file(&t, &w.join("child-result"), child);
    if res != "ok" || cres != "ok" {
        t.fail(&format!("after restore, parent: {res}; child: {cres}"));
    }
    // The parent first: then the child is ours (we are a subreaper) to reap.
    kill_and_reap(pid);
    kill_and_reap(child);
}

/// Connects to `argv[1]` (a listener of the test's), writes `ready`, and
/// on `go` sends "after" on the connection and writes `sent`.
const CLIENT: &str = r#"
import os, socket, sys, time
path, w = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path)
open(w + "/ready", "w").write(str(s.fileno()))
while not os.path.exists(w + "/go"):
    time.sleep(0.02)
s.send(b"after")
open(w + "/sent", "w").write("ok")
while True:
    time.sleep(1)
"#;

#[test]
fn peer_outside_the_tree_is_refused_unless_ext_unix_sk() {
    let Some(t) = Test::new("unix_sockets_external") else {
        return;
    };
    let w = t.work();
    let lpath = w.join("outside.sock");
    let listener = UnixListener::bind(&lpath).unwrap();
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(CLIENT)
                .arg(&lpath)
                .arg(&w),
        )
        .id() as i32;
    let fd = wait_file(&t, &w.join("ready"), pid);
    let (mut first, _) = listener.accept().unwrap();

    let images = t.images();
    let p = pid.to_string();
    let base = [
        "dump",
        "-t",
        &p,
        "-D",
        images.to_str().unwrap(),
        "-o",
        "dump.log",
        "-v4",
    ];
    t.criu_err(
        &base,
        &[
            &format!("pid {pid} fd {fd}"),
            "outside the dumped tree",
            lpath.to_str().unwrap(),
            "--ext-unix-sk",
        ],
    );
    t.assert_running_untouched(pid, "after the refused dump");
    // --external for another inode does not allow it either.
    let mut other = base.to_vec();
    other.extend(["--external", "unix[1]"]);
    t.criu_err(&other, &["outside the dumped tree"]);
    let mut bad = base.to_vec();
    bad.extend(["--external", "mnt[x]"]);
    t.criu_err(&bad, &["--external mnt[x]", "unix[INO]"]);
    t.assert_running_untouched(pid, "after the refused dumps");

    t.dump(pid, &["--ext-unix-sk"]);
    reap_dumped(&t, pid);
    let mut buf = [0u8; 16];
    // The dumped process was killed: its end of the connection is gone.
    assert_eq!(first.read(&mut buf).unwrap_or(0), 0);

    t.restore_detached(pid, &[]);
    listener.set_nonblocking(false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = listener.accept().map(|(mut c, _)| {
            let mut got = [0u8; 5];
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.read_exact(&mut got).map(|_| got.to_vec())
        });
        let _ = tx.send(r);
    });
    std::fs::write(w.join("go"), "").unwrap();
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(Ok(got))) if got == b"after" => {}
        other => t.fail(&format!(
            "the restored process did not reconnect and send: {other:?}; {}",
            describe(pid)
        )),
    }
    let _ = first.write(b"x");
    kill_and_reap(pid);
}

/// Connects to `argv[1]` and makes the connection its stdout (fd 1 only),
/// then writes `ready` and sleeps.
const STDOUT_SOCKET: &str = r#"
import os, socket, sys, time
path, w = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path)
os.dup2(s.fileno(), 1); s.close()
open(w + "/ready", "w").write("ok")
while True:
    time.sleep(0.05)
"#;

#[test]
fn stdout_socket_to_outside_is_inherited_like_other_stdio() {
    let Some(t) = Test::new("unix_sockets_stdio") else {
        return;
    };
    let w = t.work();
    let lpath = w.join("stdout.sock");
    let listener = UnixListener::bind(&lpath).unwrap();
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(STDOUT_SOCKET)
                .arg(&lpath)
                .arg(&w),
        )
        .id() as i32;
    wait_file(&t, &w.join("ready"), pid);
    let _conn = listener.accept().unwrap();
    // No --ext-unix-sk needed: as for a pipe or terminal on 0-2, the
    // restored fd 1 is the restoring criu's.
    let run = t.dump(pid, &[]);
    let log = read(&t.images().join("dump.log")).unwrap_or_default();
    if !log.contains(&format!("pid {pid} fd 1 is socket:["))
        || !log.contains("whose peer is not dumped")
    {
        t.fail(&format!("no warning about fd 1 in the dump log ({run:?})"));
    }
    reap_dumped(&t, pid);
    let show = t.criu_ok(&["show", "-D", t.images().to_str().unwrap()]);
    if !show.stdout.contains("inherited") {
        t.fail(&format!(
            "criu show does not list fd 1 as inherited:\n{}",
            show.stdout
        ));
    }
    t.restore_detached(pid, &[]);
    t.assert_running_untouched(pid, "after restore");
    kill_and_reap(pid);
}
