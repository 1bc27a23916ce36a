//! Pipes, FIFOs, eventfd, signalfd, timerfd, epoll, inotify, fanotify and memfd in
//! live processes: each target sets its descriptors up, is dumped and
//! restored, and then (when the test creates `go` in its work directory)
//! checks their state from inside and writes what it found to `result`,
//! one `name ok|BAD detail` line per check (io_uring and other unsupported
//! kinds: tests/tests/unsupported_fds.rs).

use criu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One process with one descriptor of every kind (python3, with ctypes for
/// what the os module lacks).
const ONE_OF_EACH: &str = include_str!("../programs/fd_one_of_each.py");

/// Starts `go` and waits for the target's `result`; fails the test on any
/// `BAD` line or when fewer than `want` checks ran.
fn collect_result(t: &Test, w: &Path, pid: i32, want: usize) {
    std::fs::write(w.join("go"), "").unwrap();
    if !wait_for(Duration::from_secs(20), || w.join("result").exists()) {
        t.fail(&format!(
            "the restored process wrote no result: {}",
            describe(pid)
        ));
    }
    let text = read(&w.join("result")).unwrap_or_default();
    let bad: Vec<&str> = text.lines().filter(|l| !l.contains(" ok ")).collect();
    let ok = text.lines().filter(|l| l.contains(" ok ")).count();
    if !bad.is_empty() || ok < want {
        t.fail(&format!(
            "checks inside the restored process failed ({ok} of {want} passed):\n{text}"
        ));
    }
}

fn wait_ready(t: &Test, w: &Path, pid: i32) {
    if !wait_for(Duration::from_secs(20), || w.join("ready").exists()) {
        t.fail(&format!("the target did not get ready: {}", describe(pid)));
    }
}

#[test]
fn one_of_each_kind_keeps_its_state() {
    let Some(t) = Test::new("fd_kinds_one_of_each") else {
        return;
    };
    let w = t.work();
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(ONE_OF_EACH).arg(&w))
        .id() as i32;
    wait_ready(&t, &w, pid);
    let links_before: Vec<String> = fd_links(pid)
        .into_iter()
        .map(|(n, l)| format!("{n} {}", kind(&l)))
        .collect();
    t.dump(pid, &[]);
    let images = t.images();
    let show = t.criu_ok(&["show", "-D", images.to_str().unwrap()]);
    for want in [
        "76800 of 131072 bytes queued",
        "count 5, EFD_SEMAPHORE",
        "mask SIGUSR1 SIGRTMIN+",
        "memfd:fdk test",
    ] {
        if !show.stdout.contains(want) {
            t.fail(&format!("criu show -D does not say {want:?}"));
        }
    }
    let memfd_file = std::fs::read_dir(&images)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("memfd-"))
        });
    let Some(memfd_file) = memfd_file else {
        t.fail("no memfd-INO.img in the images")
    };
    let show = t.criu_ok(&["show", "-f", memfd_file.to_str().unwrap(), "-c"]);
    if !show.stdout.contains("memfd contents") || !show.stdout.contains("|memfd-contents ") {
        t.fail("criu show -f memfd-INO.img -c does not show the contents");
    }
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    let links_after: Vec<String> = fd_links(pid)
        .into_iter()
        .map(|(n, l)| format!("{n} {}", kind(&l)))
        .collect();
    if links_after != links_before {
        t.fail(&format!(
            "descriptors differ after restore:\nbefore {links_before:?}\nafter  {links_after:?}"
        ));
    }
    collect_result(&t, &w, pid, 24);
    kill_and_reap(pid);
}

/// A link without its inode number (`pipe:[123]` -> `pipe`).
fn kind(link: &str) -> String {
    match link.find(":[") {
        Some(i) if !link.starts_with('/') => link[..i].to_string(),
        _ => link.to_string(),
    }
}

/// A parent and its child share both ends of a pipe with 100 KiB in flight
/// (the pipe enlarged to 256 KiB); after restore they still share the same
/// descriptions, the child reads everything the parent wrote before the
/// dump and after the restore, in order.
const PIPE_PARENT_CHILD: &str = r#"
import fcntl, os, sys, time
d = sys.argv[1]
r, w = os.pipe()
fcntl.fcntl(w, 1031, 1 << 18)
before = bytes((i * 7) % 251 for i in range(100 * 1024))
os.write(w, before)
child = os.fork()
if child == 0:
    while not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.05)
    got = b""
    want = len(before) + len(b"after restore")
    while len(got) < want:
        got += os.read(r, 1 << 20)
    ok = got == before + b"after restore"
    open(os.path.join(d, "result.tmp"), "w").write(f"pipe-child {'ok' if ok else 'BAD'} {len(got)}\n")
    os.rename(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
    while True:
        time.sleep(1)
open(os.path.join(d, "ready.tmp"), "w").write(f"{os.getpid()} {child} {r} {w}\n")
os.rename(os.path.join(d, "ready.tmp"), os.path.join(d, "ready"))
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.05)
os.write(w, b"after restore")
while True:
    time.sleep(1)
"#;

#[test]
fn pipe_shared_by_parent_and_child_keeps_data_in_flight() {
    let Some(t) = Test::new("fd_kinds_pipe_tree") else {
        return;
    };
    let w = t.work();
    let parent = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(PIPE_PARENT_CHILD)
                .arg(&w),
        )
        .id() as i32;
    wait_ready(&t, &w, parent);
    let ready = read(&w.join("ready")).unwrap_or_default();
    let n: Vec<i32> = ready
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let (child, r, wr) = (n[1], n[2], n[3]);
    t.track(child);
    t.dump(parent, &[]);
    reap_dumped(&t, parent);
    if let Err(e) = reap(child, Duration::from_secs(10)) {
        t.fail(&format!("dumped child {child} was not killed: {e}"));
    }
    t.restore_detached(parent, &[]);
    for fd in [r, wr] {
        if !same_description(parent, fd, child, fd) {
            t.fail(&format!(
                "fd {fd} of {parent} and {child} are not one description after restore"
            ));
        }
    }
    if !same_description(parent, r, parent, r) || same_description(parent, r, parent, wr) {
        t.fail("kcmp does not tell the two ends apart");
    }
    std::fs::write(w.join("go"), "").unwrap();
    if !wait_for(Duration::from_secs(20), || w.join("result").exists()) {
        t.fail(&format!(
            "the restored child wrote no result: {}",
            describe(child)
        ));
    }
    let text = read(&w.join("result")).unwrap_or_default();
    if !text.starts_with("pipe-child ok") {
        t.fail(&format!("the child read the wrong data: {text}"));
    }
    kill_and_reap(parent);
    kill_and_reap(child);
}

/// `bash -c 'A | B'` with a line in flight between the two: after restore
/// the reader gets it (and the next one the writer sends). Both sides wait
/// with `read -t` on a FIFO the shell opened read-write (no short-lived
/// `sleep` processes to race with the dump).
#[test]
fn bash_pipeline_with_data_in_flight() {
    let Some(t) = Test::new("fd_kinds_bash_pipeline") else {
        return;
    };
    let w = t.work();
    let script = format!(
        "cd {}; mkfifo tick; exec 9<>tick; {{ echo in-flight; while [ ! -e go ]; do read -t 0.1 -u 9 x; done; echo after; read -u 9 x; }} | {{ while [ ! -e go ]; do read -t 0.1 -u 9 x; done; cat > out; }}",
        w.display()
    );
    let root = t
        .spawn_target(Command::new("bash").arg("-c").arg(&script))
        .id() as i32;
    // Both subshells running, and the echo done (give it a moment).
    if !wait_for(Duration::from_secs(10), || descendants(root).len() >= 2) {
        t.fail(&format!("the pipeline did not start: {}", describe(root)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = descendants(root);
    for &p in &before {
        t.track(p);
    }
    t.dump(root, &[]);
    let images = t.images();
    let show = t.criu_ok(&["show", "-D", images.to_str().unwrap()]);
    if !show.stdout.contains("10 of 65536 bytes queued") {
        t.fail("criu show does not list the 10 bytes in flight in the pipeline's pipe");
    }
    reap_dumped(&t, root);
    reap_killed_tree(&t, &before);
    t.restore_detached(root, &[]);
    std::fs::write(w.join("go"), "").unwrap();
    if !wait_for(Duration::from_secs(10), || {
        read(&w.join("out")).is_some_and(|s| s == "in-flight\nafter\n")
    }) {
        t.fail(&format!(
            "the reader got {:?}, not the line in flight and the next: {}",
            read(&w.join("out")),
            describe(root)
        ));
    }
    for p in descendants(root) {
        kill_and_reap(p);
    }
    kill_and_reap(root);
}

/// `tail -f` (inotify on the file it follows) goes on printing lines
/// appended after the restore.
#[test]
fn tail_follows_after_restore() {
    let Some(t) = Test::new("fd_kinds_tail") else {
        return;
    };
    let w = t.work();
    let log = w.join("log");
    let out = w.join("tail.out");
    std::fs::write(&log, "first\n").unwrap();
    let script = format!("exec tail -n +1 -f {} > {}", log.display(), out.display());
    let pid = t
        .spawn_target(Command::new("sh").arg("-c").arg(&script))
        .id() as i32;
    if !wait_for(Duration::from_secs(10), || {
        read(&out).is_some_and(|s| s == "first\n")
            && fd_links(pid).iter().any(|(_, l)| l.contains("inotify"))
    }) {
        t.fail(&format!(
            "tail -f did not start with inotify: {:?}",
            fd_links(pid)
        ));
    }
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"after restore\n").unwrap();
    }
    if !wait_for(Duration::from_secs(10), || {
        read(&out).is_some_and(|s| s.ends_with("after restore\n"))
    }) {
        t.fail(&format!(
            "tail did not print the line appended after restore: {:?}",
            read(&out)
        ));
    }
    kill_and_reap(pid);
}

/// A python3 target that sets up `setup` (which must define `fd`, the
/// descriptor the error names) and then counts, one line per 50 ms.
fn refusal_target(t: &Test, setup: &str) -> (i32, i32) {
    let w = t.work();
    let prog = format!(
        "import ctypes, os, select, sys, time\nd = sys.argv[1]\nlibc = ctypes.CDLL(None, use_errno=True)\n{setup}\nopen(os.path.join(d, 'ready.tmp'), 'w').write(str(fd))\nos.rename(os.path.join(d, 'ready.tmp'), os.path.join(d, 'ready'))\nn = 0\nwhile True:\n    n += 1\n    open(os.path.join(d, 'count'), 'w').write(str(n))\n    time.sleep(0.05)\n"
    );
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(&prog).arg(&w))
        .id() as i32;
    wait_ready(t, &w, pid);
    let fd = read(&w.join("ready"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1);
    (pid, fd)
}

/// The dump fails naming what cannot be restored, and the target runs on.
fn assert_refused(t: &Test, pid: i32, needles: &[&str]) {
    t.dump_refused(pid, &["-o", "dump.log"], needles);
    let count = || read(&t.work().join("count")).and_then(|s| s.parse::<u64>().ok());
    let before = count();
    if !wait_for(Duration::from_secs(5), || count() > before) {
        t.fail("the target stopped counting after the refused dump");
    }
    kill_and_reap(pid);
}

#[test]
fn epoll_watching_a_closed_descriptor_is_refused() {
    let Some(t) = Test::new("fd_kinds_epoll_closed") else {
        return;
    };
    // The eventfd stays registered (its dup keeps it open) under a number
    // that no longer names it.
    let (pid, fd) = refusal_target(
        &t,
        "e = os.eventfd(0)\nkeep = os.dup(e)\nep = select.epoll()\nep.register(e, select.EPOLLIN)\nos.close(e)\nfd = e",
    );
    let what = format!("pid {pid}: an epoll instance watches a file registered as fd {fd} that is no longer open at that number");
    assert_refused(&t, pid, &[&what]);
}

#[test]
fn inotify_watch_on_a_deleted_file_is_refused() {
    let Some(t) = Test::new("fd_kinds_inotify_deleted") else {
        return;
    };
    let (pid, _) = refusal_target(
        &t,
        "p = os.path.join(d, 'gone')\nopen(p, 'w').close()\nkeep = open(p)\nfd = libc.inotify_init1(0)\nlibc.inotify_add_watch(fd, p.encode(), 2)\nos.unlink(p)",
    );
    let what = format!("pid {pid}: inotify watch 1 is on inode");
    assert_refused(&t, pid, &[&what, "cannot name by a path"]);
}

/// A python3 asyncio program: its loop waits in epoll (with the loop's
/// self-pipe socketpair registered), a stream over a socketpair carries a
/// message every 50 ms from one coroutine to another, and an eventfd
/// registered with `add_reader` is signalled by a timer. It writes its
/// token and the three counters to `state`.
const ASYNCIO: &str = r#"
import asyncio, os, secrets, socket, sys
d = sys.argv[1]
token = secrets.token_hex(8)
counts = {"ticks": 0, "messages": 0, "events": 0}

def save():
    tmp = os.path.join(d, "state.tmp")
    with open(tmp, "w") as f:
        f.write(f"{token} {counts['ticks']} {counts['messages']} {counts['events']}\n")
    os.replace(tmp, os.path.join(d, "state"))

async def main():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    ev = os.eventfd(0, os.EFD_NONBLOCK)
    def on_event():
        counts["events"] += os.eventfd_read(ev)
    loop.add_reader(ev, on_event)
    async def sender():
        n = 0
        while True:
            n += 1
            wa.write(f"msg {n}\n".encode())
            await wa.drain()
            await asyncio.sleep(0.05)
    async def receiver():
        expect = 1
        while True:
            line = await rb.readline()
            if line != f"msg {expect}\n".encode():
                counts["messages"] = -1000000
            expect += 1
            counts["messages"] += 1
    async def ticker():
        while True:
            counts["ticks"] += 1
            os.eventfd_write(ev, 1)
            save()
            await asyncio.sleep(0.05)
    await asyncio.gather(sender(), receiver(), ticker())

asyncio.run(main())
"#;

fn asyncio_state(path: &Path) -> Option<(String, [i64; 3])> {
    let text = read(path)?;
    let mut it = text.split_whitespace();
    let token = it.next()?.to_owned();
    let mut c = [0i64; 3];
    for v in &mut c {
        *v = it.next()?.parse().ok()?;
    }
    Some((token, c))
}

#[test]
fn python_asyncio_carries_on() {
    let Some(t) = Test::new("fd_kinds_asyncio") else {
        return;
    };
    let w = t.work();
    let state = w.join("state");
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(ASYNCIO).arg(&w))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        asyncio_state(&state).is_some_and(|(_, c)| c.iter().all(|&x| x >= 5))
    }) {
        t.fail(&format!(
            "the asyncio program did not get going: {:?} {}",
            read(&state),
            describe(pid)
        ));
    }
    let kinds: Vec<String> = fd_links(pid).into_iter().map(|(_, l)| l).collect();
    for want in ["anon_inode:[eventpoll]", "anon_inode:[eventfd]", "socket:["] {
        if !kinds.iter().any(|k| k.starts_with(want)) {
            t.fail(&format!("the program has no {want} descriptor: {kinds:?}"));
        }
    }
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    let Some((token, at_dump)) = asyncio_state(&state) else {
        t.fail("no state after the dump")
    };
    t.restore_detached(pid, &[]);
    let mut now = None;
    if !wait_for(Duration::from_secs(10), || {
        now = asyncio_state(&state);
        now.as_ref()
            .is_some_and(|(_, c)| c.iter().zip(&at_dump).all(|(n, d)| *n >= d + 10))
    }) {
        t.fail(&format!(
            "after restore the counters (ticks, messages, events) did not all go on from {at_dump:?}: {now:?} {}",
            describe(pid)
        ));
    }
    let (new_token, c) = now.unwrap();
    if new_token != token || c[1] < 0 {
        t.fail(&format!(
            "token {token} -> {new_token}, messages {} (negative: one was lost or out of order)",
            c[1]
        ));
    }
    kill_and_reap(pid);
}

/// A fanotify group (root only) with an inode mark on a file and an ignore
/// mark on its directory: after restore its marks are the same (fdinfo)
/// and a write to the file is reported, with a descriptor of that file.
const FANOTIFY: &str = r#"
import ctypes, os, select, struct, sys, time
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
FAN_MODIFY, FAN_OPEN = 0x2, 0x20
fd = libc.fanotify_init(0x10, os.O_RDONLY)
assert fd >= 0, ctypes.get_errno()
watched = os.path.join(d, "watched")
open(watched, "w").close()
assert libc.fanotify_mark(fd, 1, FAN_MODIFY, -100, watched.encode()) == 0
assert libc.fanotify_mark(fd, 1 | 0x20 | 0x40, FAN_OPEN, -100, d.encode()) == 0
def marks():
    return sorted(l for l in open(f"/proc/self/fdinfo/{fd}").read().splitlines() if l.startswith("fanotify"))
before = marks()
open(os.path.join(d, "ready.tmp"), "w").write(str(fd))
os.rename(os.path.join(d, "ready.tmp"), os.path.join(d, "ready"))
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.05)
out = []
out.append(f"fanotify-marks {'ok' if marks() == before else 'BAD'} {marks()!r} vs {before!r}")
with open(watched, "a") as f:
    f.write("x")
select.select([fd], [], [], 5)
buf = os.read(fd, 4096)
ok = False
while len(buf) >= 24:
    ln, _, _, _, mask, efd, pid = struct.unpack("IBBHQii", buf[:24])
    if mask & FAN_MODIFY and efd >= 0 and os.readlink(f"/proc/self/fd/{efd}") == watched:
        ok = True
    if efd >= 0:
        os.close(efd)
    buf = buf[ln:]
out.append(f"fanotify-event {'ok' if ok else 'BAD'} ")
open(os.path.join(d, "result.tmp"), "w").write("\n".join(out) + "\n")
os.rename(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
while True:
    time.sleep(1)
"#;

#[test]
fn fanotify_marks_and_events_after_restore() {
    let Some(t) = Test::new("fd_kinds_fanotify") else {
        return;
    };
    let w = t.work();
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(FANOTIFY).arg(&w))
        .id() as i32;
    wait_ready(&t, &w, pid);
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    collect_result(&t, &w, pid, 2);
    kill_and_reap(pid);
}
