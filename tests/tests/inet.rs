//! TCP servers and connections across dump and restore. Every test runs in
//! a network namespace of its own: the test thread leaves the host's with
//! unshare(2) `CLONE_NEWNET` (a thread may), and the targets and criu it
//! starts inherit it, so nothing is sent anywhere but that namespace's
//! loopback, and the network lock's nftables table lives there too.

use criu_tests::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Move this test thread into a new network namespace with `lo` up.
fn netns(t: &Test) {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        t.fail(&format!("unshare(CLONE_NEWNET): {e}"));
    }
    let ok = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        t.fail("ip link set lo up failed (is iproute2 installed?)");
    }
}

fn nft_tables() -> String {
    Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Byte `i` of the test stream.
fn pat(i: usize) -> u8 {
    (i % 251) as u8
}

/// GET `path` from 127.0.0.1:`port`; the status line and the body.
fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.lines().next()?.to_owned();
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[test]
fn python_http_server_serves_after_restore() {
    let Some(t) = Test::new("inet-http") else {
        return;
    };
    netns(&t);
    let token = format!("token-{}", std::process::id());
    std::fs::write(t.work().join("page.txt"), &token).unwrap();
    let pid = t
        .spawn_target(
            Command::new("python3")
                .args(["-m", "http.server", "8080", "--bind", "127.0.0.1"])
                .arg("--directory")
                .arg(t.work()),
        )
        .id() as i32;
    let get = || http_get(8080, "/page.txt");
    if !wait_for(Duration::from_secs(20), || get().is_some()) {
        t.fail(&format!("http.server does not answer: {}", describe(pid)));
    }
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    if get().is_some() {
        t.fail("something still answers on 127.0.0.1:8080 after the dump");
    }
    t.restore_detached(pid, &[]);
    match get() {
        Some((status, body)) if status.contains("200") && body == token => {}
        other => t.fail(&format!("restored http.server answered {other:?}")),
    }
    // It keeps serving.
    for _ in 0..3 {
        if get().is_none_or(|(_, b)| b != token) {
            t.fail("restored http.server stopped serving");
        }
    }
    kill_and_reap(pid);
}

/// An echo server: accepts one connection on 127.0.0.1:7000 (on `::`,
/// dual stack, when `v6` is set) and sends back every byte it reads.
const ECHO_SERVER: &str = r#"
import socket, sys
v6 = sys.argv[2] == "v6"
l = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if v6:
    l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l.bind(("::" if v6 else "127.0.0.1", 7000))
l.listen(4)
open(sys.argv[1], "w").write("ready")
c, _ = l.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
c.close()
"#;

/// A client in this test process keeps sending a pattern to a python echo
/// server and checks every byte that comes back, while the server alone is
/// dumped (killed) and restored with `--tcp-established`: the network lock
/// holds the client's packets back meanwhile, so it sees neither a reset
/// nor a lost or repeated byte.
fn echo_server_alone(v6: bool) {
    let name = if v6 { "inet-echo-v6" } else { "inet-echo" };
    let Some(t) = Test::new(name) else {
        return;
    };
    netns(&t);
    let ready = t.work().join("ready");
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(ECHO_SERVER)
                .arg(&ready)
                .arg(if v6 { "v6" } else { "v4" }),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || ready.exists()) {
        t.fail(&format!("echo server did not start: {}", describe(pid)));
    }
    let mut c = TcpStream::connect(("127.0.0.1", 7000)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut r = c.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let got = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let chunk: Vec<u8> = (n..n + 997).map(pat).collect();
                c.write_all(&chunk)
                    .map_err(|e| format!("write at {n}: {e}"))?;
                n += chunk.len();
                sent.store(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
            c.shutdown(Shutdown::Write).map_err(|e| e.to_string())
        })
    };
    let reader = {
        let got = got.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            loop {
                let k = r.read(&mut buf).map_err(|e| format!("read at {n}: {e}"))?;
                if k == 0 {
                    return Ok(());
                }
                for (i, &b) in buf[..k].iter().enumerate() {
                    if b != pat(n + i) {
                        return Err(format!("byte {} is {b}, expected {}", n + i, pat(n + i)));
                    }
                }
                n += k;
                got.store(n, Ordering::SeqCst);
            }
        })
    };
    let progress = |what: &str, from: usize| {
        if !wait_for(Duration::from_secs(30), || {
            got.load(Ordering::SeqCst) > from + 50_000
        }) {
            t.fail(&format!(
                "echo does not progress {what}: {} bytes back, {} sent",
                got.load(Ordering::SeqCst),
                sent.load(Ordering::SeqCst)
            ));
        }
    };
    progress("before the dump", 0);
    t.dump(pid, &["--tcp-established"]);
    reap_dumped(&t, pid);
    if !nft_tables().contains(&format!("criu-lock-{pid}")) {
        t.fail(&format!(
            "no network lock after the dump: nft list tables says {:?}",
            nft_tables()
        ));
    }
    let at_dump = got.load(Ordering::SeqCst);
    t.restore_detached(pid, &[]);
    if nft_tables().contains("criu-lock") {
        t.fail("the network lock is still there after the restore");
    }
    progress("after the restore", at_dump);
    stop.store(true, Ordering::SeqCst);
    if let Err(e) = writer.join().unwrap() {
        t.fail(&format!("client writer: {e}"));
    }
    if let Err(e) = reader.join().unwrap() {
        t.fail(&format!("client reader: {e}"));
    }
    let (s, g) = (sent.load(Ordering::SeqCst), got.load(Ordering::SeqCst));
    if s != g {
        t.fail(&format!("sent {s} bytes but {g} came back"));
    }
    // The server saw our end of stream and exits by itself.
    if reap(pid, Duration::from_secs(10)).is_err() {
        t.fail(&format!("echo server did not end: {}", describe(pid)));
    }
}

#[test]
fn echo_server_alone_keeps_its_connection() {
    echo_server_alone(false);
}

#[test]
fn echo_server_alone_v4_mapped_on_dual_stack_socket() {
    echo_server_alone(true);
}

/// A python process that forks: the parent serves on a listening socket
/// (each byte xor 0x5a), the child connects to it and checks every byte
/// that comes back, writing how many it has checked (or an error) to a
/// file.
const PAIR: &str = r#"
import os, socket, sys, time
path = sys.argv[1]
def report(text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(1)
port = l.getsockname()[1]
if os.fork() == 0:
    l.close()
    c = socket.create_connection(("127.0.0.1", port))
    n = 0
    while True:
        c.sendall(bytes((n + i) % 251 for i in range(1000)))
        buf = b""
        while len(buf) < 1000:
            d = c.recv(1000 - len(buf))
            if not d:
                report(f"ERROR end of stream at {n}")
                sys.exit(1)
            buf += d
        if buf != bytes(((n + i) % 251) ^ 0x5a for i in range(1000)):
            report(f"ERROR wrong bytes at {n}")
            sys.exit(1)
        n += 1000
        report(str(n))
        time.sleep(0.01)
c, _ = l.accept()
while True:
    d = c.recv(4096)
    if not d:
        break
    c.sendall(bytes(b ^ 0x5a for b in d))
"#;

fn pair_progress(path: &std::path::Path) -> Result<u64, String> {
    let text = read(path).unwrap_or_default();
    if text.starts_with("ERROR") {
        return Err(text);
    }
    Ok(text.trim().parse().unwrap_or(0))
}

fn wait_pair(t: &Test, path: &std::path::Path, beyond: u64, when: &str) -> u64 {
    let mut last = Ok(0);
    if !wait_for(Duration::from_secs(30), || {
        last = pair_progress(path);
        last.as_ref().is_ok_and(|&n| n > beyond + 20_000)
    }) {
        t.fail(&format!(
            "client/server pair {when}: {last:?} (wanted more than {beyond})"
        ));
    }
    last.unwrap()
}

#[test]
fn client_and_server_in_the_tree_keep_talking() {
    let Some(t) = Test::new("inet-pair") else {
        return;
    };
    netns(&t);
    let file = t.work().join("progress");
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(PAIR).arg(&file))
        .id() as i32;
    wait_pair(&t, &file, 0, "before the dump");

    // Without --tcp-established: refused, and both keep running.
    let images = t.images();
    let p = pid.to_string();
    t.criu_err(
        &[
            "dump",
            "-t",
            &p,
            "-D",
            images.to_str().unwrap(),
            "-o",
            "refused.log",
        ],
        &["established", "--tcp-established"],
    );
    t.assert_running_untouched(pid, "after the refused dump");
    let now = pair_progress(&file).unwrap_or(0);
    wait_pair(&t, &file, now, "after the refused dump");
    if !nft_tables().trim().is_empty() {
        t.fail(&format!("a refused dump left a lock: {}", nft_tables()));
    }

    let child = children(pid);
    if child.len() != 1 {
        t.fail(&format!("expected one child of {pid}: {child:?}"));
    }
    t.track(child[0]);
    t.dump(pid, &["--tcp-established"]);
    reap_dumped(&t, pid);
    // The killed child was reparented to us (a subreaper): reap it so its
    // PID is free for the restore.
    if let Err(e) = reap(child[0], Duration::from_secs(10)) {
        t.fail(&format!("child {} after the dump: {e}", child[0]));
    }
    let at_dump = pair_progress(&file).unwrap_or_else(|e| t.fail(&e));
    t.restore_detached(pid, &[]);
    wait_pair(&t, &file, at_dump, "after the restore");
    if !nft_tables().trim().is_empty() {
        t.fail(&format!("lock left after restore: {}", nft_tables()));
    }
    kill_and_reap(child[0]);
    kill_and_reap(pid);
}

fn children(pid: i32) -> Vec<i32> {
    read(std::path::Path::new(&format!(
        "/proc/{pid}/task/{pid}/children"
    )))
    .unwrap_or_default()
    .split_whitespace()
    .filter_map(|s| s.parse().ok())
    .collect()
}

#[test]
fn leave_running_releases_connections_and_lock() {
    let Some(t) = Test::new("inet-leave-running") else {
        return;
    };
    netns(&t);
    let file = t.work().join("progress");
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(PAIR).arg(&file))
        .id() as i32;
    wait_pair(&t, &file, 0, "before the dump");
    let child = children(pid);
    for &c in &child {
        t.track(c);
    }
    t.dump(pid, &["--tcp-established", "-R"]);
    let now = pair_progress(&file).unwrap_or_else(|e| t.fail(&e));
    wait_pair(&t, &file, now, "after criu dump -R");
    if !nft_tables().trim().is_empty() {
        t.fail(&format!("dump -R left a lock: {}", nft_tables()));
    }
    kill_and_reap(pid);
}

/// Send one RESP command (see the Redis protocol) and read one reply line
/// (and the bulk string after it, if any).
fn redis_cmd(s: &mut TcpStream, args: &[&str]) -> Result<String, String> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send {args:?}: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err(format!("{args:?}: connection closed")),
            Err(e) => return Err(format!("{args:?}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.parse().map_err(|_| format!("bad reply {line}"))?;
        if n < 0 {
            return Ok("(nil)".into());
        }
        let mut body = vec![0u8; n as usize + 2];
        s.read_exact(&mut body)
            .map_err(|e| format!("{args:?}: {e}"))?;
        return Ok(String::from_utf8_lossy(&body[..n as usize]).into_owned());
    }
    Ok(line)
}

#[test]
fn redis_keeps_keys_and_its_client_connection() {
    let Some(t) = Test::new("inet-redis") else {
        return;
    };
    netns(&t);
    let pid = t
        .spawn_target(
            Command::new("redis-server")
                .args(["--port", "6379", "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", "no", "--daemonize", "no"])
                .current_dir(t.work()),
        )
        .id() as i32;
    let mut conn = None;
    wait_for(Duration::from_secs(20), || {
        conn = TcpStream::connect(("127.0.0.1", 6379)).ok();
        conn.is_some()
    });
    let Some(mut c) = conn else {
        t.fail(&format!("redis-server does not answer: {}", describe(pid)))
    };
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let run = |c: &mut TcpStream, args: &[&str], want: &str| match redis_cmd(c, args) {
        Ok(r) if r == want => {}
        other => t.fail(&format!("redis {args:?} gave {other:?}, wanted {want:?}")),
    };
    for i in 0..200 {
        run(
            &mut c,
            &["SET", &format!("key{i}"), &format!("value{i}")],
            "+OK",
        );
    }
    t.dump(pid, &["--tcp-established"]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    // The connection made before the dump still works.
    for i in 0..200 {
        run(&mut c, &["GET", &format!("key{i}")], &format!("value{i}"));
    }
    run(&mut c, &["SET", "after", "restore"], "+OK");
    // And new ones are accepted.
    let mut d = TcpStream::connect(("127.0.0.1", 6379)).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    run(&mut d, &["GET", "after"], "restore");
    run(&mut d, &["DBSIZE"], ":201");
    kill_and_reap(pid);
}

/// setuid mode: a user (uid 65534) runs criu with `criu-helper` installed
/// setuid root. Their python http.server is dumped and restored and serves
/// again; their client/server pair with an established connection is
/// refused with `--tcp-established` (TCP repair mode and the network lock
/// need CAP_NET_ADMIN, which the user's criu lacks) and keeps talking.
#[test]
fn setuid_user_restores_a_server_and_is_refused_connections() {
    let Some(t) = Test::new("inet-setuid") else {
        return;
    };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("inet-setuid: skipped: setpriv is not installed");
        return;
    }
    netns(&t);
    let helper = t.setuid_helper();
    let refused_dir = t.root().join("refused");
    std::fs::create_dir(&refused_dir).unwrap();
    for d in [t.images(), t.work(), refused_dir.clone()] {
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    }
    let token = format!("user-token-{}", std::process::id());
    std::fs::write(t.work().join("page.txt"), &token).unwrap();
    let user = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let env = format!("CRIU_HELPER={}", helper.display());
    let mut as_user = vec!["env", env.as_str(), "setpriv"];
    as_user.extend(user);
    let criu = |args: &[&str]| t.wait_criu(t.spawn_criu_wrapped(&as_user, args), CRIU_TIMEOUT);

    let pid = t
        .spawn_target(
            Command::new("setpriv")
                .args(user)
                .args(["/usr/bin/python3", "-m", "http.server", "8080"])
                .args(["--bind", "127.0.0.1", "--directory"])
                .arg(t.work())
                .current_dir(t.work()),
        )
        .id() as i32;
    let get = || http_get(8080, "/page.txt");
    if !wait_for(Duration::from_secs(20), || get().is_some()) {
        t.fail(&format!(
            "the user's http.server does not answer: {}",
            describe(pid)
        ));
    }
    let images = t.images();
    let images = images.to_str().unwrap();
    let p = pid.to_string();
    let run = criu(&["dump", "-t", &p, "-D", images, "-o", "dump.log", "-v4"]);
    if run.code() != 0 {
        t.fail("criu dump as the user failed");
    }
    reap_dumped(&t, pid);
    let run = criu(&["restore", "-d", "-D", images, "-o", "restore.log", "-v4"]);
    if run.code() != 0 {
        t.fail("criu restore as the user failed");
    }
    t.track(pid);
    match get() {
        Some((status, body)) if status.contains("200") && body == token => {}
        other => t.fail(&format!(
            "the user's restored http.server answered {other:?}"
        )),
    }
    kill_and_reap(pid);

    let file = t.work().join("progress");
    let pair = t
        .spawn_target(
            Command::new("setpriv")
                .args(user)
                .args(["/usr/bin/python3", "-c", PAIR])
                .arg(&file)
                .current_dir(t.work()),
        )
        .id() as i32;
    let now = wait_pair(&t, &file, 0, "as the user, before the dump");
    for c in children(pair) {
        t.track(c);
    }
    let p = pair.to_string();
    let run = criu(&[
        "dump",
        "-t",
        &p,
        "-D",
        refused_dir.to_str().unwrap(),
        "-o",
        "refused.log",
        "--tcp-established",
    ]);
    t.check_err(&run, &["CAP_NET_ADMIN", "established", "--tcp-close"]);
    t.assert_running_untouched(pair, "after the refused dump");
    wait_pair(&t, &file, now, "as the user, after the refused dump");
    if !nft_tables().trim().is_empty() {
        t.fail(&format!("a refused dump left a lock: {}", nft_tables()));
    }
}

/// A server that accepts one connection on 127.0.0.1:7001 and then never
/// reads from it; a raw ICMP socket with argv[2] == "raw".
const IDLE_SERVER: &str = r#"
import socket, sys, time
if sys.argv[2] == "raw":
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 7001))
l.listen(8)
open(sys.argv[1], "w").write("ready")
c, _ = l.accept()
while True:
    time.sleep(1)
"#;

fn idle_server(t: &Test, kind: &str) -> (i32, TcpStream) {
    let ready = t.work().join("ready");
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(IDLE_SERVER)
                .arg(&ready)
                .arg(kind),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || ready.exists()) {
        t.fail(&format!("idle server did not start: {}", describe(pid)));
    }
    let c = TcpStream::connect(("127.0.0.1", 7001)).unwrap();
    (pid, c)
}

#[test]
fn half_closed_connection_refused_unless_tcp_close() {
    let Some(t) = Test::new("inet-half-closed") else {
        return;
    };
    netns(&t);
    let (pid, c) = idle_server(&t, "tcp");
    // The peer closes its side: the server's socket is in CLOSE_WAIT.
    c.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let images = t.images();
    let p = pid.to_string();
    t.criu_err(
        &[
            "dump",
            "-t",
            &p,
            "-D",
            images.to_str().unwrap(),
            "--tcp-established",
        ],
        &["CLOSE_WAIT", "--tcp-close"],
    );
    t.assert_running_untouched(pid, "after the refused dump");
    // With --tcp-close it is saved closed; the listener comes back.
    t.dump(pid, &["--tcp-close"]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    if TcpStream::connect(("127.0.0.1", 7001)).is_err() {
        t.fail("the restored server does not listen on 127.0.0.1:7001");
    }
    kill_and_reap(pid);
}

#[test]
fn raw_socket_refused_and_target_unharmed() {
    let Some(t) = Test::new("inet-raw") else {
        return;
    };
    netns(&t);
    let (pid, _c) = idle_server(&t, "raw");
    let images = t.images();
    let p = pid.to_string();
    t.criu_err(
        &["dump", "-t", &p, "-D", images.to_str().unwrap()],
        &[&format!("pid {pid} fd"), "raw IP sockets are not supported"],
    );
    t.assert_running_untouched(pid, "after the refused dump");
    kill_and_reap(pid);
}

#[test]
fn missing_nft_refuses_and_leaves_the_connection_working() {
    let Some(t) = Test::new("inet-no-nft") else {
        return;
    };
    netns(&t);
    let ready = t.work().join("ready");
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(ECHO_SERVER)
                .arg(&ready)
                .arg("v4"),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || ready.exists()) {
        t.fail(&format!("echo server did not start: {}", describe(pid)));
    }
    let mut c = TcpStream::connect(("127.0.0.1", 7000)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let images = t.images();
    let p = pid.to_string();
    // criu finds nft through PATH; /usr/sbin (where nft is) left out.
    let run = t.wait_criu(
        t.spawn_criu_wrapped(
            &["env", "PATH=/usr/bin:/bin"],
            &[
                "dump",
                "-t",
                &p,
                "-D",
                images.to_str().unwrap(),
                "--tcp-established",
            ],
        ),
        CRIU_TIMEOUT,
    );
    t.check_err(&run, &["cannot run nft", "--network-lock skip"]);
    t.assert_running_untouched(pid, "after the refused dump");
    // Not left in repair mode: the server still echoes.
    c.write_all(b"still here").unwrap();
    let mut b = [0u8; 10];
    if c.read_exact(&mut b).is_err() || &b != b"still here" {
        t.fail("the connection does not work after the refused dump");
    }
    kill_and_reap(pid);
}

/// The echo server of [`ECHO_SERVER`], but it opens a raw socket after
/// accepting, so a dump locks and repairs the connection first and then
/// fails on the raw socket.
const ECHO_THEN_RAW: &str = r#"
import socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 7000))
l.listen(4)
open(sys.argv[1], "w").write("ready")
c, _ = l.accept()
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
"#;

fn echo_once(t: &Test, c: &mut TcpStream, what: &str) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 10];
    let ok = c.write_all(b"still here").is_ok() && c.read_exact(&mut b).is_ok();
    if !ok || &b != b"still here" {
        t.fail(&format!("the connection does not echo {what}"));
    }
}

#[test]
fn failed_dump_and_failed_restore_remove_the_lock() {
    let Some(t) = Test::new("inet-lock-failures") else {
        return;
    };
    netns(&t);
    let ready = t.work().join("ready");
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(ECHO_THEN_RAW)
                .arg(&ready),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || ready.exists()) {
        t.fail(&format!("echo server did not start: {}", describe(pid)));
    }
    let mut c = TcpStream::connect(("127.0.0.1", 7000)).unwrap();
    echo_once(&t, &mut c, "before the dump");
    let images = t.images();
    let p = pid.to_string();
    // The connection (lower fd) is locked and repaired, then the raw
    // socket fails the dump: the lock goes, the connection works on.
    t.criu_err(
        &[
            "dump",
            "-t",
            &p,
            "-D",
            images.to_str().unwrap(),
            "--tcp-established",
        ],
        &["raw IP sockets are not supported"],
    );
    t.assert_running_untouched(pid, "after the failed dump");
    if !nft_tables().trim().is_empty() {
        t.fail(&format!("a failed dump left a lock: {}", nft_tables()));
    }
    echo_once(&t, &mut c, "after the failed dump");
    kill_and_reap(pid);

    // A dump that succeeds leaves the lock; a restore that fails (the
    // listening address is taken) removes it and leaves no process.
    let ready2 = t.work().join("ready2");
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(ECHO_SERVER)
                .arg(&ready2)
                .arg("v4"),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || ready2.exists()) {
        t.fail(&format!("echo server did not start: {}", describe(pid)));
    }
    let mut c = TcpStream::connect(("127.0.0.1", 7000)).unwrap();
    echo_once(&t, &mut c, "before the second dump");
    t.dump(pid, &["--tcp-established"]);
    reap_dumped(&t, pid);
    if !nft_tables().contains("criu-lock") {
        t.fail("no lock after the dump");
    }
    let blocker = std::net::TcpListener::bind(("127.0.0.1", 7000)).unwrap();
    t.criu_err(
        &[
            "restore",
            "-d",
            "-D",
            images.to_str().unwrap(),
            "-o",
            "failed.log",
        ],
        &["address is in use"],
    );
    t.assert_no_process(pid);
    if !nft_tables().trim().is_empty() {
        t.fail(&format!("a failed restore left the lock: {}", nft_tables()));
    }
    drop(blocker);
}

/// A UDP echo server on [::1]:9000 (IPv6 only) that also keeps a UDP
/// socket connected to the test's socket, through which it reports how
/// many datagrams it echoed.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind(("::1", 9000))
r = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
r.connect(("::1", int(sys.argv[2])))
open(sys.argv[1], "w").write("ready")
n = 0
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
    n += 1
    r.send(str(n).encode())
"#;

#[test]
fn udp_server_echoes_after_restore() {
    let Some(t) = Test::new("inet-udp") else {
        return;
    };
    netns(&t);
    let report = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let ready = t.work().join("ready");
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(UDP_ECHO)
                .arg(&ready)
                .arg(report.local_addr().unwrap().port().to_string()),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || ready.exists()) {
        t.fail(&format!("UDP server did not start: {}", describe(pid)));
    }
    let c = std::net::UdpSocket::bind("[::1]:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    report
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let ask = |i: usize| -> Result<(), String> {
        let msg = format!("datagram {i}");
        c.send_to(msg.as_bytes(), "[::1]:9000")
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 64];
        let n = c.recv(&mut b).map_err(|e| format!("echo {i}: {e}"))?;
        if &b[..n] != msg.as_bytes() {
            return Err(format!("echo {i}: got {:?}", &b[..n]));
        }
        let n = report
            .recv(&mut b)
            .map_err(|e| format!("report {i}: {e}"))?;
        if &b[..n] != (i + 1).to_string().as_bytes() {
            return Err(format!("report {i}: got {:?}", &b[..n]));
        }
        Ok(())
    };
    for i in 0..3 {
        if let Err(e) = ask(i) {
            t.fail(&format!("before the dump: {e}"));
        }
    }
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    // Same bound socket, same connected one, same count.
    for i in 3..6 {
        if let Err(e) = ask(i) {
            t.fail(&format!("after the restore: {e}"));
        }
    }
    kill_and_reap(pid);
}
