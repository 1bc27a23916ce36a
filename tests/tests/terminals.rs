//! Terminals: a pseudo-terminal pair inside the dumped tree (a python3
//! `pty.fork()` program: the parent holds the master, the child is a
//! session leader with the slave as its controlling terminal) and a shell
//! job on a terminal the test owns (`--shell-job`). Each is dumped,
//! restored and shown to carry on: the child keeps reading and writing
//! through the pty with its settings, window size, controlling terminal,
//! foreground group and queued bytes as they were.

use criu_tests::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// tests/programs/pty_pair.py: `argv[1]` is a path prefix `S`. The parent (master) sets the window
/// to 33 rows x 111 columns and writes "queued line\npartial" to the
/// master before the child reads anything; the child (slave, session
/// leader) sets VINTR to ^G and says "child ready". Nobody reads until
/// `S.go` exists, so both directions hold queued bytes at the dump. Then
/// the parent writes " end\n" and a "ping N" line every 100 ms, and copies
/// everything it reads from the master to `S.parent`; the child answers
/// each line with "ECHO <LINE>" and writes what it sees (its line, count,
/// session, group, terminal foreground group, tty name, window size and
/// VINTR) to `S.child`.
const PTY_PROGRAM: &str = include_str!("../programs/pty_pair.py");

fn child_report(s: &str) -> Option<Vec<String>> {
    let text = read(Path::new(&format!("{s}.child")))?;
    let v: Vec<String> = text.trim_end().split('|').map(str::to_string).collect();
    (v.len() == 8).then_some(v)
}

/// The device number of `/proc/PID/fd/FD`'s file, and field 7 (`tty_nr`)
/// of `/proc/PID/stat`.
fn ctty_and_fd_rdev(pid: i32, fd: i32) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
        .map(|m| m.rdev())
        .unwrap_or(u64::MAX);
    let stat = read(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or_default();
    let tty_nr = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(4)?.parse().ok())
        .unwrap_or(0);
    (rdev, tty_nr)
}

/// Start [`PTY_PROGRAM`]; returns (parent, child, state prefix) once the
/// child said it is ready (its "child ready" is then in the master's
/// queue, unread, and it has the slave on 0, 1, 2).
fn start_pty_program(t: &Test) -> (i32, i32, String) {
    let s = t.work().join("s").to_str().unwrap().to_string();
    let parent = t
        .spawn_target(Command::new("python3").arg("-c").arg(PTY_PROGRAM).arg(&s))
        .id() as i32;
    let mut pids = None;
    if !wait_for(Duration::from_secs(20), || {
        pids = read(Path::new(&format!("{s}.pid"))).and_then(|p| {
            let v: Vec<i32> = p
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (v.len() == 2).then(|| (v[0], v[1]))
        });
        pids.is_some()
    }) {
        t.fail(&format!("pty program did not start: {}", describe(parent)));
    }
    let (p, c) = pids.unwrap();
    assert_eq!(p, parent);
    t.track(c);
    (parent, c, s)
}

/// After `S.go`: the child reads the queued line first, then the partial
/// line completed after the restore, then pings; its controlling terminal
/// is the pty, it leads its session and group and is the foreground; the
/// window size and VINTR are as set; the parent saw every queued byte once.
fn check_carries_on(t: &Test, parent: i32, child: i32, s: &str, when: &str) {
    std::fs::write(format!("{s}.go"), b"").unwrap();
    let mut rep = None;
    if !wait_for(Duration::from_secs(10), || {
        rep = child_report(s);
        rep.as_ref()
            .is_some_and(|r| r[0].parse::<u32>().unwrap_or(0) >= 5)
    }) {
        t.fail(&format!(
            "{when}: the child does not read through the pty (report {rep:?}): {} / {}",
            describe(parent),
            describe(child)
        ));
    }
    let r = rep.unwrap();
    let lines = read(Path::new(&format!("{s}.lines"))).unwrap_or_default();
    let lines: Vec<&str> = lines.lines().collect();
    if lines.len() < 3 || lines[0] != "queued line" || lines[1] != "partial end" {
        t.fail(&format!(
            "{when}: queued input not read back as it was typed: lines {lines:?}"
        ));
    }
    let me = child.to_string();
    let tty_name = std::fs::read_link(format!("/proc/{child}/fd/0"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if r[2] != me || r[3] != me || r[4] != me || r[5] != tty_name || r[6] != "111x33" || r[7] != "7"
    {
        t.fail(&format!(
            "{when}: child state {r:?}, expected session, group and foreground {child}, tty {tty_name}, 111x33, VINTR 7"
        ));
    }
    let (rdev, tty_nr) = ctty_and_fd_rdev(child, 0);
    if rdev != tty_nr {
        t.fail(&format!(
            "{when}: the child's controlling terminal ({tty_nr:#x}) is not its fd 0 ({rdev:#x})"
        ));
    }
    // What the parent read: each queued byte once (no echo made twice),
    // in order, then the answers.
    let mut out = String::new();
    if !wait_for(Duration::from_secs(10), || {
        out = read(Path::new(&format!("{s}.parent"))).unwrap_or_default();
        out.contains("ECHO PING 2")
    }) {
        t.fail(&format!("{when}: the parent reads no answers: {out:?}"));
    }
    let head = "queued line\r\npartialchild ready\r\n";
    let head_alt = "child ready\r\nqueued line\r\npartial";
    if !(out.starts_with(head) || out.starts_with(head_alt))
        || out.matches("queued line").count() != 1
        || !out.contains("ECHO QUEUED LINE\r\n")
        || !out.contains(" end\r\n")
        || !out.contains("ECHO PARTIAL END\r\n")
    {
        t.fail(&format!("{when}: the master's queue was not kept: {out:?}"));
    }
}

#[test]
fn pty_pair_in_tree_is_restored_and_carries_on() {
    let Some(t) = Test::new("pty_pair") else {
        return;
    };
    let (parent, child, s) = start_pty_program(&t);
    let (rdev, tty_nr) = ctty_and_fd_rdev(child, 0);
    assert_eq!(rdev, tty_nr, "the child's ctty is its pty before the dump");

    t.dump(parent, &[]);
    reap_dumped(&t, parent);
    let _ = reap(child, Duration::from_secs(10));
    let show = t.criu_ok(&["show", "-D", t.images().to_str().unwrap()]);
    for needle in [
        "pty master of /dev/pts/",
        "111x33",
        "19 bytes input",
        &format!("controlling terminal of session {child}"),
        "pty slave /dev/pts/",
    ] {
        if !show.stdout.contains(needle) {
            t.fail(&format!("criu show lacks {needle:?}:\n{}", show.stdout));
        }
    }

    t.restore_detached(parent, &[]);
    t.track(child);
    check_carries_on(&t, parent, child, &s, "after restore");
    kill_and_reap(child);
    kill_and_reap(parent);
}

#[test]
fn pty_queues_are_put_back_with_leave_running() {
    let Some(t) = Test::new("pty_leave_running") else {
        return;
    };
    let (parent, child, s) = start_pty_program(&t);
    t.dump(parent, &["-R"]);
    if !is_alive(parent) || !is_alive(child) {
        t.fail("dump -R killed the pty program");
    }
    check_carries_on(&t, parent, child, &s, "after dump -R");
    kill_and_reap(child);
    kill_and_reap(parent);
}

/// A job on the caller's terminal: reads lines, answers "ECHO <LINE>" and
/// writes "<n> <pgrp> <foreground group> <sid>" to `argv[1]`.
const JOB_PROGRAM: &str = r#"
import os, sys
n = 0
while True:
    line = sys.stdin.readline()
    if not line:
        break
    n += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write("%d %d %d %d\n" % (n, os.getpgrp(), os.tcgetpgrp(0), os.getsid(0)))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    sys.stdout.write("ECHO " + line.upper()); sys.stdout.flush()
"#;

/// A tiny job-control shell, session leader on the test's terminal: runs
/// `argv[2:sep]` as a foreground job (its own process group), waits for
/// it, then, once the file `argv[1]` exists, runs the command after `--`
/// the same way. Each job's pid goes to `argv[1] + ".jobs"`.
const SHELL_PROGRAM: &str = r#"
import os, sys, signal, time
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
trigger = sys.argv[1]
sep = sys.argv.index("--")
def run(argv):
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    os.tcsetpgrp(0, pid)
    with open(trigger + ".jobs", "a") as f:
        f.write("%d\n" % pid)
    os.waitpid(pid, 0)
    os.tcsetpgrp(0, os.getpgrp())
run(sys.argv[2:sep])
while not os.path.exists(trigger):
    time.sleep(0.05)
run(sys.argv[sep + 1:])
"#;

/// A pseudo-terminal pair for the test: (master, slave).
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors; NULL name, termios, winsize.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both were just returned by openpty and are ours.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    for fd in [&m, &s] {
        // SAFETY: integer arguments only.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: integer arguments only.
    unsafe {
        let fl = libc::fcntl(m.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(m.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    (m, s)
}

/// Read the master until `needle` shows up in what was read since the
/// last call (kept in `seen`), or `timeout`.
fn expect(m: &OwnedFd, seen: &mut String, needle: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a local buffer of that size.
        let n = unsafe { libc::read(m.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            seen.push_str(&String::from_utf8_lossy(&buf[..n as usize]));
        }
        if let Some(at) = seen.find(needle) {
            seen.drain(..at + needle.len());
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn type_line(m: &OwnedFd, line: &str) {
    let b = line.as_bytes();
    // SAFETY: writes from a live buffer of that length.
    let n = unsafe { libc::write(m.as_raw_fd(), b.as_ptr().cast(), b.len()) };
    assert_eq!(n, b.len() as isize);
}

/// The [`SHELL_PROGRAM`] command, session leader with the slave `slave`
/// as its terminal: first job `job`, then `criu restore -j` of the test's
/// images once `trigger` exists.
fn mini_shell(t: &Test, slave: OwnedFd, trigger: &Path, job: &[String]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(SHELL_PROGRAM)
        .arg(trigger)
        .args(job)
        .arg("--")
        .arg(&bins().criu)
        .args(["restore", "-j", "-D"])
        .arg(t.images())
        .args(["-o", "restore.log", "-v4"])
        .current_dir(t.root())
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls (close_range, setsid, ioctl).
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The pids the mini shell started, in order.
fn shell_jobs(t: &Test) -> Vec<i32> {
    read(&t.work().join("restore-now.jobs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[test]
fn shell_job_on_the_callers_terminal() {
    let Some(t) = Test::new("shell_job") else {
        return;
    };
    let (m, slave) = open_pty();
    let state = t.work().join("job");
    let trigger = t.work().join("restore-now");
    let images = t.images();
    let job_argv = [
        "python3".into(),
        "-c".into(),
        JOB_PROGRAM.into(),
        state.display().to_string(),
    ];
    let mut cmd = mini_shell(&t, slave, &trigger, &job_argv);
    let mut shell = cmd.spawn().expect("start the mini shell");
    let shell_pid = shell.id() as i32;
    t.track(shell_pid);
    let jobs = || shell_jobs(&t);
    if !wait_for(Duration::from_secs(10), || !jobs().is_empty()) {
        t.fail("the mini shell started no job");
    }
    let job = jobs()[0];
    t.track(job);
    let mut seen = String::new();
    type_line(&m, "one\n");
    if !expect(&m, &mut seen, "ECHO ONE", Duration::from_secs(10)) {
        t.fail(&format!(
            "the job does not answer: {seen:?} {}",
            describe(job)
        ));
    }

    // Without --shell-job: refused, naming the terminal, and the job runs on.
    let pid = job.to_string();
    let run = t.criu(&["dump", "-t", &pid, "-D", images.to_str().unwrap()]);
    t.check_err(
        &run,
        &["--shell-job", "/dev/pts/", &format!("pid {job} fd 0")],
    );
    t.assert_running_untouched(job, "after the refused dump");
    type_line(&m, "two\n");
    if !expect(&m, &mut seen, "ECHO TWO", Duration::from_secs(10)) {
        t.fail(&format!(
            "the job stopped answering after a refused dump: {seen:?}"
        ));
    }

    t.dump(job, &["-j"]);
    // The mini shell reaps the killed job.
    if !wait_for(Duration::from_secs(10), || {
        !is_alive(job) && proc_state(job).is_none()
    }) {
        t.fail(&format!("the dumped job is still there: {}", describe(job)));
    }
    let show = t.criu_ok(&["show", "-D", images.to_str().unwrap()]);
    if !show.stdout.contains("shell job terminal /dev/pts/") || !show.stdout.contains("foreground")
    {
        t.fail(&format!(
            "criu show lacks the shell job terminal:\n{}",
            show.stdout
        ));
    }
    // Restoring a shell job without -j is refused before anything is made.
    t.criu_err(
        &["restore", "-d", "-D", images.to_str().unwrap()],
        &["--shell-job"],
    );
    t.assert_no_process(job);
    // With -j but no terminal on criu's 0-2 (the harness gives /dev/null
    // and files): refused too, before anything is made.
    t.criu_err(
        &["restore", "-d", "-j", "-D", images.to_str().unwrap()],
        &["needs a terminal"],
    );
    t.assert_no_process(job);

    // The mini shell runs `criu restore -j` as its next foreground job.
    std::fs::write(&trigger, b"").unwrap();
    if !wait_for(Duration::from_secs(20), || is_alive(job)) {
        t.fail(&format!(
            "criu restore -j did not bring the job back: {}",
            read(&images.join("restore.log")).unwrap_or_default()
        ));
    }
    t.track(job);
    type_line(&m, "three\n");
    if !expect(&m, &mut seen, "ECHO THREE", Duration::from_secs(10)) {
        t.fail(&format!(
            "the restored job does not read and write its terminal: {seen:?} {}\n{}",
            describe(job),
            read(&images.join("restore.log")).unwrap_or_default()
        ));
    }
    let st: Vec<i32> = read(&state)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // Its own group, the terminal's foreground, in the shell's session.
    if st.len() != 4 || st[0] != 3 || st[1] != job || st[2] != job || st[3] != shell_pid {
        t.fail(&format!(
            "restored job state {st:?}: expected 3 lines, group and foreground {job}, session {shell_pid}"
        ));
    }
    kill_and_reap(job);
    let _ = shell.kill();
    let _ = shell.wait();
}

/// util-linux `script -f` run as a shell job on the test's terminal, with a
/// python3 line echoer as its command: script holds the master of its own
/// pty (plus a signalfd and the typescript file), the echoer is a session
/// leader on the slave. Dumped with -j, restored by `criu restore -j`
/// started from the same terminal: lines typed on the terminal still go
/// through script and its pty to the echoer and back, and into the
/// typescript.
#[test]
fn script_carries_on_after_restore() {
    let Some(t) = Test::new("script") else {
        return;
    };
    let (m, slave) = open_pty();
    let trigger = t.work().join("restore-now");
    let typescript = t.work().join("typescript");
    let echoer = "python3 -c 'import sys\nwhile True:\n l = sys.stdin.readline()\n sys.stdout.write(\"ECHO \" + l.upper()); sys.stdout.flush()'".to_string();
    let job = [
        "script".to_string(),
        "-q".into(),
        "-f".into(),
        "-c".into(),
        echoer,
        typescript.display().to_string(),
    ];
    let mut shell = mini_shell(&t, slave, &trigger, &job)
        .spawn()
        .expect("start the mini shell");
    t.track(shell.id() as i32);
    if !wait_for(Duration::from_secs(10), || !shell_jobs(&t).is_empty()) {
        t.fail("the mini shell started no job");
    }
    let script = shell_jobs(&t)[0];
    t.track(script);
    let mut seen = String::new();
    type_line(&m, "one\n");
    if !expect(&m, &mut seen, "ECHO ONE", Duration::from_secs(20)) {
        t.fail(&format!(
            "script does not pass lines: {seen:?} {}",
            describe(script)
        ));
    }
    // script's child (the shell running the echoer) and its descendants:
    // once script is killed they are orphans our subreaper adopts.
    let below = descendants(script);
    let echoer = below.first().copied().unwrap_or(0);
    for &p in &below {
        t.track(p);
    }

    t.dump(script, &["-j"]);
    if !wait_for(Duration::from_secs(10), || proc_state(script).is_none()) {
        t.fail(&format!(
            "the dumped script is still there: {}",
            describe(script)
        ));
    }
    reap_killed_tree(&t, &below);
    std::fs::write(&trigger, b"").unwrap();
    if !wait_for(Duration::from_secs(20), || {
        is_alive(script) && is_alive(echoer)
    }) {
        t.fail(&format!(
            "criu restore -j did not bring script back: {}",
            read(&t.images().join("restore.log")).unwrap_or_default()
        ));
    }
    t.track(script);
    t.track(echoer);
    type_line(&m, "two\n");
    if !expect(&m, &mut seen, "ECHO TWO", Duration::from_secs(10)) {
        t.fail(&format!(
            "restored script does not pass lines: {seen:?} {} / {}\n{}",
            describe(script),
            describe(echoer),
            read(&t.images().join("restore.log")).unwrap_or_default()
        ));
    }
    let ts = read(&typescript).unwrap_or_default();
    if !ts.contains("ECHO ONE") || !ts.contains("ECHO TWO") {
        t.fail(&format!("the typescript lacks the lines: {ts:?}"));
    }
    kill_and_reap(echoer);
    kill_and_reap(script);
    let _ = shell.kill();
    let _ = shell.wait();
}

/// A session leader whose controlling terminal (a pty of the tree) is open
/// in none of its descriptors cannot get it back: the dump is refused,
/// naming it, and both processes run on.
#[test]
fn session_leader_without_its_ctty_open_is_refused() {
    let Some(t) = Test::new("pty_ctty_closed") else {
        return;
    };
    const PROGRAM: &str = r#"
import os, pty, sys, time
pid, master = pty.fork()
if pid == 0:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    open(sys.argv[1], "w").write(str(os.getpid()))
    while True:
        time.sleep(1)
while True:
    time.sleep(1)
"#;
    let ready = t.work().join("child");
    let parent = t
        .spawn_target(Command::new("python3").arg("-c").arg(PROGRAM).arg(&ready))
        .id() as i32;
    let mut child = 0;
    if !wait_for(Duration::from_secs(20), || {
        child = read(&ready).and_then(|c| c.parse().ok()).unwrap_or(0);
        child != 0
    }) {
        t.fail(&format!("program did not start: {}", describe(parent)));
    }
    t.track(child);
    let pid = parent.to_string();
    let run = t.criu(&["dump", "-t", &pid, "-D", t.images().to_str().unwrap()]);
    t.check_err(
        &run,
        &[
            &format!("pid {child}"),
            "controlling terminal /dev/pts/",
            "none of its descriptors",
        ],
    );
    t.assert_running_untouched(parent, "after the refused dump");
    t.assert_running_untouched(child, "after the refused dump");
    kill_and_reap(child);
    kill_and_reap(parent);
}
