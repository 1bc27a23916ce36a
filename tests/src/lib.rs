//! Harness for criu's end-to-end tests.
//!
//! Every test builds a [`Test`]: a private temporary directory (`images/`
//! for `-D`, `work/` for the target's files), a record of every criu run
//! (printed when the test fails), and a guard that kills every process the
//! test tracked when it ends, passing or failing.
//!
//! The test process makes itself a child subreaper so that processes restored
//! with `-d` (whose parent, the helper, exits) become its children and can be
//! reaped with `waitpid(pid)`. The harness never calls `waitpid(-1)`: tests
//! run in parallel threads and must not steal each other's children.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// How long a criu command may run before the harness kills it.
pub const CRIU_TIMEOUT: Duration = Duration::from_secs(60);

/// The binaries under test.
#[derive(Debug)]
pub struct Bins {
    /// The frontend, `criu`.
    pub criu: PathBuf,
    /// The privileged helper, `criu-helper`.
    pub helper: PathBuf,
    /// The test workload, `criu-workload`.
    pub workload: PathBuf,
}

/// Finds the binaries: `$CRIU_TEST_BIN_DIR` if set, else the cargo target
/// directory this test runs from (`target/debug/deps/x` gives `target/debug`).
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = match std::env::var_os("CRIU_TEST_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let exe = std::env::current_exe().expect("current_exe");
                let mut dir = exe.parent().expect("test binary has a directory").to_path_buf();
                if dir.file_name().is_some_and(|n| n == "deps") {
                    dir.pop();
                }
                dir
            }
        };
        let find = |name: &str| {
            let p = dir.join(name);
            assert!(
                p.is_file(),
                "{} not found: run `cargo build --workspace` first (the README's test command does)",
                p.display()
            );
            p
        };
        Bins { criu: find("criu"), helper: find("criu-helper"), workload: find("criu-workload") }
    })
}

/// Makes this process a child subreaper (once per test binary).
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            r,
            0,
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    });
}

/// True when running as root; otherwise prints why the test is skipped.
pub fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        eprintln!("{test}: skipped: needs root");
        false
    }
}

// ---------------------------------------------------------------------------
// /proc helpers

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The one-letter state of a process (`R`, `S`, `T`, `Z`, ...), `None` if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The parent pid.
pub fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The process group id.
pub fn pgid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// The session id.
pub fn sid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

/// The command name (/proc/PID/comm).
pub fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The `TracerPid:` of /proc/PID/status.
pub fn tracer_pid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// True if a process (not a zombie) has this pid.
pub fn is_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// Where each descriptor of `pid` numbered 3 or more points (stdio is
/// replaced by criu's own at restore).
pub fn fd_links(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(|e| {
                let e = e.ok()?;
                let fd: i32 = e.file_name().to_str()?.parse().ok()?;
                let target = fs::read_link(e.path()).ok()?;
                (fd >= 3).then(|| (fd, target.display().to_string()))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The memory layout of `pid`: `start-end perms path` per mapping.
pub fn maps(pid: i32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5..).map(|p| p.join(" ")).unwrap_or_default();
            format!(
                "{} {} {}",
                f.first().unwrap_or(&""),
                f.get(1).unwrap_or(&""),
                path
            )
        })
        .collect()
}

/// A short description of a process for failure messages.
pub fn describe(pid: i32) -> String {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => format!(
            "pid {pid}: stat: {} | TracerPid {:?}",
            stat.trim_end(),
            tracer_pid(pid)
        ),
        Err(_) => format!("pid {pid}: no such process"),
    }
}

// ---------------------------------------------------------------------------
// Waiting and killing

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `waitpid(pid, WNOHANG)`: `Ok(Some(status))` when reaped, `Ok(None)` when
/// still running, `Err` when `pid` is not our child (ECHILD).
fn try_reap(pid: i32) -> Result<Option<ExitStatus>, std::io::Error> {
    let mut status = 0;
    // SAFETY: waits for one specific pid; `status` is a valid out-parameter.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match r {
        0 => Ok(None),
        r if r == pid => Ok(Some(ExitStatus::from_raw(status))),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Waits up to `timeout` for `pid` (our child) to exit and reaps it.
/// `Err` if it is not our child or did not exit in time.
pub fn reap(pid: i32, timeout: Duration) -> Result<ExitStatus, String> {
    let end = Instant::now() + timeout;
    loop {
        match try_reap(pid) {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                return Err(format!(
                    "pid {pid} did not exit within {timeout:?}: {}",
                    describe(pid)
                ))
            }
            Err(e) => return Err(format!("waitpid({pid}): {e}")),
        }
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Kills `pid` with SIGKILL and makes sure it is gone: reaps it if it is our
/// child (a subreaper adopts restored processes), else polls until
/// /proc/PID disappears (another parent reaps it).
pub fn kill_and_reap(pid: i32) {
    if pid <= 1 || proc_state(pid).is_none() {
        return;
    }
    let _ = signal(pid, libc::SIGKILL);
    if !wait_gone(pid, Duration::from_secs(10)) {
        eprintln!(
            "warning: pid {pid} still present after SIGKILL: {}",
            describe(pid)
        );
    }
}

/// Waits up to `timeout` until `pid` is gone: reaps it once it is our
/// zombie (a subreaper adopts the orphans of a killed tree), or sees
/// /proc/PID disappear when another parent reaps it. False on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        match try_reap(pid) {
            Ok(Some(_)) => return true,
            Err(_) if proc_state(pid).is_none() => return true,
            _ if Instant::now() >= end => return false,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Every descendant of `pid`, each parent before its children (read from
/// /proc/PID/task/TID/children of the leader, see proc(5)).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let kids = fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for k in kids
            .split_whitespace()
            .filter_map(|k| k.parse::<i32>().ok())
        {
            out.push(k);
            todo.push(k);
        }
    }
    out
}

/// After a dump killed a tree: waits until each of `pids` (parents before
/// children, as [`descendants`] lists them) is gone, reaping those the
/// test's subreaper adopted, so that none is left as a zombie holding its
/// PID when the tree is restored. Fails the test on a timeout.
pub fn reap_killed_tree(t: &Test, pids: &[i32]) {
    for &p in pids {
        if !wait_gone(p, Duration::from_secs(10)) {
            t.fail(&format!(
                "pid {p} of the dumped tree is still there: {}",
                describe(p)
            ));
        }
    }
}

/// Copy the executable `from` to `to` with cp(1), so that the descriptor
/// the copy is written through lives only in that child. Written from this
/// multi-threaded test process, it could be inherited by a process another
/// test forks at that moment and make executing the copy fail with
/// `ETXTBSY` (see execve(2)).
pub fn copy_executable(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp {} {}: {st}", from.display(), to.display());
}

/// `len` bytes of `pid`'s memory at `addr`, read through /proc/PID/mem
/// (see proc(5)). Panics if they cannot be read: tests call it on memory
/// the target has set up. Reading a page never touched maps the zero page
/// there: look at /proc/PID/pagemap first where presence matters.
pub fn read_memory(pid: i32, addr: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut buf = vec![0u8; len as usize];
    mem.read_exact_at(&mut buf, addr)
        .unwrap_or_else(|e| panic!("pid {pid}: reading {len} bytes at {addr:#x}: {e}"));
    buf
}

/// How many pages of the `size` bytes at `addr` in `pid` do not hold
/// their offset in the region, `| 1`, in their first word (the pattern the
/// page tests' targets write).
pub fn pages_not_holding_their_offset(pid: i32, addr: u64, size: u64) -> usize {
    let buf = read_memory(pid, addr, size);
    (0..size as usize)
        .step_by(4096)
        .filter(|&i| u64::from_ne_bytes(buf[i..i + 8].try_into().unwrap()) != i as u64 | 1)
        .count()
}

/// Whether fd `a` of process `pa` and fd `b` of process `pb` are one open
/// file description (kcmp(2) `KCMP_FILE`).
pub fn same_description(pa: i32, a: i32, pb: i32, b: i32) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers.
    unsafe { libc::syscall(libc::SYS_kcmp, pa, pb, KCMP_FILE, a, b) == 0 }
}

/// Reads a whole file; `None` if missing.
pub fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// Reads a file holding one integer (e.g. a pidfile or a counter).
pub fn read_number(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

// ---------------------------------------------------------------------------
// Running criu

/// The outcome of one criu command.
#[derive(Debug, Clone)]
pub struct CriuRun {
    /// The arguments after `criu`.
    pub args: Vec<String>,
    /// The exit status (`None` if it was killed after the timeout).
    pub status: Option<ExitStatus>,
    /// How long it ran.
    pub elapsed: Duration,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// The log file named by `-o`, resolved against `-D`.
    pub log_file: Option<PathBuf>,
    /// The `-D` directory.
    pub images_dir: Option<PathBuf>,
}

fn arg_value(args: &[String], short: &str, long: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == short || a == long {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_owned());
        }
        if a.len() > short.len() && a.starts_with(short) && !a.starts_with("--") {
            return Some(a[short.len()..].to_owned());
        }
    }
    None
}

impl CriuRun {
    /// The exit code, or 128+signal if criu was killed, or -1 on timeout.
    pub fn code(&self) -> i32 {
        match self.status {
            Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            None => -1,
        }
    }

    /// Everything known about this run, for failure messages.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let status = match self.status {
            Some(st) => format!("{st}"),
            None => "KILLED by the test harness: it did not finish in time".to_owned(),
        };
        let _ = writeln!(s, "$ criu {}", self.args.join(" "));
        let _ = writeln!(s, "  status: {status} after {:.2?}", self.elapsed);
        let _ = writeln!(s, "  stdout: {}", indent(&self.stdout));
        let _ = writeln!(s, "  stderr: {}", indent(&self.stderr));
        if let Some(log) = &self.log_file {
            match fs::read_to_string(log) {
                Ok(text) => {
                    let _ = writeln!(s, "  log {}:\n{}", log.display(), tail(&text, 200));
                }
                Err(e) => {
                    let _ = writeln!(s, "  log {}: cannot read: {e}", log.display());
                }
            }
        }
        s
    }
}

fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "(empty)".into();
    }
    format!(
        "\n{}",
        text.lines()
            .map(|l| format!("    | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The last `n` lines of `text`, indented.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut s = String::new();
    if skip > 0 {
        let _ = writeln!(s, "    | ... ({skip} earlier lines)");
    }
    for l in &lines[skip..] {
        let _ = writeln!(s, "    | {l}");
    }
    s
}

/// A criu command running in the background (e.g. a restore without `-d`).
pub struct CriuChild {
    child: Child,
    args: Vec<String>,
    started: Instant,
    exited: Option<(ExitStatus, Duration)>,
    out: PathBuf,
    err: PathBuf,
    log_file: Option<PathBuf>,
    images_dir: Option<PathBuf>,
}

impl CriuChild {
    /// The pid of the criu process.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// True once criu has exited.
    pub fn has_exited(&mut self) -> bool {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some((st, self.started.elapsed()));
            }
        }
        self.exited.is_some()
    }

    /// Polls `cond` like [`wait_for`] but gives up as soon as criu exits.
    pub fn wait_while_running(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut() -> bool,
    ) -> bool {
        wait_for(timeout, || cond() || self.has_exited()) && cond()
    }

    /// Waits up to `timeout`; kills criu if it takes longer.
    pub fn wait(mut self, timeout: Duration) -> CriuRun {
        let end = Instant::now() + timeout;
        while !self.has_exited() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (status, elapsed) = match self.exited {
            Some((st, elapsed)) => (Some(st), elapsed),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                (None, self.started.elapsed())
            }
        };
        CriuRun {
            args: self.args,
            status,
            elapsed,
            stdout: read(&self.out).unwrap_or_default(),
            stderr: read(&self.err).unwrap_or_default(),
            log_file: self.log_file,
            images_dir: self.images_dir,
        }
    }
}

/// Marks every inherited descriptor above 2 close-on-exec in a child about to
/// exec, so targets start with only what the test gives them.
fn cloexec_inherited(cmd: &mut Command) {
    // SAFETY: the closure only calls close_range, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}

/// Makes the child a session and process-group leader before it execs.
pub fn in_new_session(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure only calls setsid, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

// ---------------------------------------------------------------------------
// The per-test fixture

/// One end-to-end test: its directories, its criu runs and its processes.
pub struct Test {
    name: String,
    tmp: Option<tempfile::TempDir>,
    runs: Mutex<Vec<CriuRun>>,
    /// Tracked PIDs with their session then: a PID whose process is gone
    /// may be another test's process by cleanup time (tests run in
    /// parallel), and that one is in another session.
    pids: Mutex<Vec<(i32, Option<i32>)>>,
    seq: Mutex<u32>,
}

impl Test {
    /// Sets up a test, or returns `None` (after printing "skipped: needs
    /// root") when not running as root.
    pub fn new(name: &str) -> Option<Test> {
        if !is_root(name) {
            return None;
        }
        Some(Self::unprivileged(name))
    }

    /// Sets up a test that does not need root.
    pub fn unprivileged(name: &str) -> Test {
        become_subreaper();
        let _ = bins();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("criu-test-{name}-"))
            .tempdir()
            .expect("tempdir");
        fs::create_dir(tmp.path().join("images")).expect("mkdir images");
        fs::create_dir(tmp.path().join("work")).expect("mkdir work");
        Test {
            name: name.to_owned(),
            tmp: Some(tmp),
            runs: Mutex::new(Vec::new()),
            pids: Mutex::new(Vec::new()),
            seq: Mutex::new(0),
        }
    }

    /// The test's temporary directory.
    pub fn root(&self) -> &Path {
        self.tmp.as_ref().expect("tempdir").path()
    }

    /// The default images directory (`-D`).
    pub fn images(&self) -> PathBuf {
        self.root().join("images")
    }

    /// A directory for the target's own files.
    pub fn work(&self) -> PathBuf {
        self.root().join("work")
    }

    /// Kills (and reaps) `pid` when the test ends, whatever happens.
    pub fn track(&self, pid: i32) {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        if !pids.iter().any(|&(p, _)| p == pid) {
            pids.push((pid, sid(pid)));
        }
    }

    /// Starts a target program in its own session with stdin, stdout and
    /// stderr on /dev/null, and tracks it.
    pub fn spawn_target(&self, cmd: &mut Command) -> Child {
        in_new_session(cmd);
        self.spawn_target_in_our_session(cmd)
    }

    /// As [`Test::spawn_target`], but the target stays in the test's session
    /// and process group, as a program started by a shell without job
    /// control does: neither leader is in the tree the target heads.
    pub fn spawn_target_in_our_session(&self, cmd: &mut Command) -> Child {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cloexec_inherited(cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start {cmd:?}: {e}", self.name));
        self.track(child.id() as i32);
        child
    }

    fn prepare(
        &self,
        wrapper: &[&str],
        args: &[&str],
    ) -> (
        Command,
        Vec<String>,
        PathBuf,
        PathBuf,
        Option<PathBuf>,
        Option<PathBuf>,
    ) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let n = {
            let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
            *seq += 1;
            *seq
        };
        let out = self.root().join(format!("criu-{n}.stdout"));
        let err = self.root().join(format!("criu-{n}.stderr"));
        let images_dir = arg_value(&args, "-D", "--images-dir").map(PathBuf::from);
        let log_file = arg_value(&args, "-o", "--log-file").map(|l| match &images_dir {
            Some(d) => d.join(l),
            None => PathBuf::from(l),
        });
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&bins().criu);
                c
            }
            None => Command::new(&bins().criu),
        };
        // Files, not pipes: a process restored with -d inherits criu's
        // stdio, and a pipe would never see EOF while it lives.
        cmd.args(&args)
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("criu stdout file"))
            .stderr(fs::File::create(&err).expect("criu stderr file"));
        cloexec_inherited(&mut cmd);
        (cmd, args, out, err, log_file, images_dir)
    }

    /// Starts criu in the background.
    pub fn spawn_criu(&self, args: &[&str]) -> CriuChild {
        self.spawn_criu_wrapped(&[], args)
    }

    /// Starts `wrapper... criu args...` in the background, e.g. with
    /// `wrapper = ["setpriv", ..., "--"]` to run criu with fewer capabilities.
    pub fn spawn_criu_wrapped(&self, wrapper: &[&str], args: &[&str]) -> CriuChild {
        let (mut cmd, args, out, err, log_file, images_dir) = self.prepare(wrapper, args);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        CriuChild {
            child,
            args,
            started: Instant::now(),
            exited: None,
            out,
            err,
            log_file,
            images_dir,
        }
    }

    /// Runs criu to completion (killed after [`CRIU_TIMEOUT`]) and records it.
    pub fn criu(&self, args: &[&str]) -> CriuRun {
        let run = self.spawn_criu(args).wait(CRIU_TIMEOUT);
        self.record(run.clone());
        run
    }

    /// Waits for a background criu (killing it after `timeout`) and records
    /// the run for failure reports.
    pub fn wait_criu(&self, child: CriuChild, timeout: Duration) -> CriuRun {
        let run = child.wait(timeout);
        self.record(run.clone());
        run
    }

    /// Records a run of a background criu for failure reports.
    pub fn record(&self, run: CriuRun) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(run);
    }

    /// Runs criu and fails the test unless it exits 0.
    pub fn criu_ok(&self, args: &[&str]) -> CriuRun {
        let run = self.criu(args);
        if run.code() != 0 {
            self.fail(&format!(
                "criu {} failed (exit {})",
                args.join(" "),
                run.code()
            ));
        }
        run
    }

    /// Runs criu and fails the test unless it exits non-zero with an error
    /// mentioning every string of `needles` (case-insensitive).
    pub fn criu_err(&self, args: &[&str], needles: &[&str]) -> CriuRun {
        let run = self.criu(args);
        self.check_err(&run, needles);
        run
    }

    /// Checks that a finished run failed with all of `needles` in its stderr.
    pub fn check_err(&self, run: &CriuRun, needles: &[&str]) {
        if run.code() == 0 {
            self.fail(&format!(
                "criu {} succeeded but should have failed",
                run.args.join(" ")
            ));
        }
        if run.status.is_none() {
            self.fail(&format!(
                "criu {} hung (killed after the timeout)",
                run.args.join(" ")
            ));
        }
        let err = run.stderr.to_lowercase();
        let missing: Vec<&&str> = needles
            .iter()
            .filter(|n| !err.contains(&n.to_lowercase()))
            .collect();
        if !missing.is_empty() {
            self.fail(&format!(
                "criu {} failed as expected, but its stderr lacks {missing:?}",
                run.args.join(" ")
            ));
        }
    }

    /// `criu dump -t PID -D images -o dump.log -v4` plus `extra`; must succeed.
    pub fn dump(&self, pid: i32, extra: &[&str]) -> CriuRun {
        let images = self.images();
        let pid = pid.to_string();
        let mut args = vec![
            "dump",
            "-t",
            &pid,
            "-D",
            images.to_str().expect("utf-8 path"),
            "-o",
            "dump.log",
            "-v4",
        ];
        args.extend_from_slice(extra);
        self.criu_ok(&args)
    }

    /// `criu restore -d -D images -o restore.log -v4` plus `extra`; must
    /// succeed. Waits until `pid` runs, tracks it and returns.
    pub fn restore_detached(&self, pid: i32, extra: &[&str]) -> CriuRun {
        let images = self.images();
        let mut args = vec![
            "restore",
            "-d",
            "-D",
            images.to_str().expect("utf-8 path"),
            "-o",
            "restore.log",
            "-v4",
        ];
        args.extend_from_slice(extra);
        let run = self.criu_ok(&args);
        self.track(pid);
        if !wait_for(Duration::from_secs(5), || is_alive(pid)) {
            self.fail(&format!(
                "criu restore -d exited 0 but pid {pid} is not running"
            ));
        }
        run
    }

    /// Checks that no live process has `pid` (after a refused restore).
    /// A zombie left behind is reaped here if it is ours, and reported.
    pub fn assert_no_process(&self, pid: i32) {
        let gone = wait_for(Duration::from_secs(3), || !is_alive(pid));
        if !gone {
            self.fail(&format!(
                "a process with pid {pid} is running after a failed restore"
            ));
        }
        if proc_state(pid) == Some('Z') {
            eprintln!(
                "note: failed restore left a zombie with pid {pid} (parent {:?}); reaping it",
                ppid(pid)
            );
            if reap(pid, Duration::from_secs(2)).is_err() {
                wait_for(Duration::from_secs(10), || proc_state(pid).is_none());
            }
        }
    }

    /// Panics with `msg` and everything that helps to debug it: every criu
    /// run of this test with its stdout, stderr and log file, the other log
    /// files in the images directory, and the images directory listing.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("\n\n=== {}: {msg}\n\n{}", self.name, self.diagnostics());
    }

    /// The diagnostics printed by [`Test::fail`].
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut shown: Vec<PathBuf> = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "--- criu run {} of {}:\n{}",
                i + 1,
                runs.len(),
                run.report()
            );
            shown.extend(run.log_file.clone());
        }
        let mut dirs: Vec<PathBuf> = runs.iter().filter_map(|r| r.images_dir.clone()).collect();
        dirs.push(self.images());
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
            entries.sort_by_key(|e| e.file_name());
            let _ = writeln!(s, "--- {}:", dir.display());
            for e in &entries {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = writeln!(s, "    {:>10}  {}", len, e.file_name().to_string_lossy());
            }
            for e in entries {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") && !shown.contains(&p) {
                    let text = read(&p).unwrap_or_default();
                    let _ = writeln!(s, "--- log {}:\n{}", p.display(), tail(&text, 200));
                }
            }
        }
        for name in ["report", "progress", "ready"] {
            if let Some(text) = read(&self.work().join(name)) {
                let _ = writeln!(s, "--- work/{name}: {}", text.trim_end());
            }
        }
        for &(pid, _) in self.pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(s, "--- {}", describe(pid));
        }
        s
    }

    /// Starts `criu-workload` on `work/` and waits until it is ready and
    /// counting. Its stdio is /dev/null, so no file it has open changes size
    /// between a dump and a restore (the workload reports through files).
    pub fn start_workload(&self) -> Workload {
        let dir = self.work();
        let mut cmd = Command::new(&bins().workload);
        cmd.arg(&dir);
        let pid = self.spawn_target(&mut cmd).id() as i32;
        let w = Workload { pid, dir };
        let ready = wait_for(Duration::from_secs(10), || {
            read_number(&w.dir.join("ready")) == Some(pid as u64)
                && w.progress().is_some_and(|n| n >= 3)
        });
        if !ready {
            self.fail(&format!("criu-workload (pid {pid}) did not become ready"));
        }
        w
    }

    /// Asks the workload to check itself (SIGUSR2) and fails the test unless
    /// it reports `OK`. Returns the counter it reported.
    pub fn workload_check(&self, w: &Workload, when: &str) -> u64 {
        let report = w.dir.join("report");
        let _ = fs::remove_file(&report);
        if let Err(e) = signal(w.pid, libc::SIGUSR2) {
            self.fail(&format!("{when}: cannot send SIGUSR2 to the workload: {e}"));
        }
        if !wait_for(Duration::from_secs(10), || report.exists()) {
            self.fail(&format!(
                "{when}: the workload wrote no report within 10 s after SIGUSR2"
            ));
        }
        let text = read(&report).unwrap_or_default();
        match text.trim().strip_prefix("OK counter=") {
            Some(n) => n.parse().unwrap_or(0),
            None => self.fail(&format!(
                "{when}: the workload's self-check failed:\n    {}",
                text.trim()
            )),
        }
    }

    /// Fails unless the workload's counter increases within a few seconds.
    pub fn assert_progressing(&self, w: &Workload, when: &str) -> u64 {
        let start = w.progress().unwrap_or(0);
        let mut now = start;
        if !wait_for(Duration::from_secs(5), || {
            now = w.progress().unwrap_or(0);
            now > start + 2
        }) {
            self.fail(&format!(
                "{when}: the workload's counter is stuck at {now} ({})",
                describe(w.pid)
            ));
        }
        now
    }

    /// Fails unless the workload `w`, started by this test, was left
    /// unharmed: running and untraced, still our child, still counting, and
    /// its self-check passes.
    pub fn assert_workload_unharmed(&self, w: &Workload, when: &str) {
        self.assert_running_untouched(w.pid, when);
        if ppid(w.pid) != Some(std::process::id() as i32) {
            self.fail(&format!("{when}: its parent changed: {}", describe(w.pid)));
        }
        self.assert_progressing(w, when);
        self.workload_check(w, when);
    }

    /// A copy of `criu-helper` installed setuid root (root:root 4755) in
    /// this test's directory, which is made reachable (0755) by uid 65534.
    pub fn setuid_helper(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.root().join("install");
        fs::create_dir(&dir).expect("mkdir install");
        for p in [self.root(), dir.as_path()] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let helper = dir.join("criu-helper");
        copy_executable(&bins().helper, &helper);
        std::os::unix::fs::chown(&helper, Some(0), Some(0)).expect("chown helper");
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o4755)).expect("chmod");
        helper
    }

    /// `criu dump -t PID -D <images> EXTRA...` must fail with every one of
    /// `needles` in its error, leave `pid` running untraced, and write no
    /// inventory.
    pub fn dump_refused(&self, pid: i32, extra: &[&str], needles: &[&str]) {
        let images = self.images();
        let pid_s = pid.to_string();
        let mut args = vec![
            "dump",
            "-t",
            &pid_s,
            "-D",
            images.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        self.criu_err(&args, needles);
        self.assert_running_untouched(pid, "after the refused dump");
        if images.join("inventory.img").exists() {
            self.fail("the refused dump left an inventory.img");
        }
    }

    /// Fails unless the restore (log `restore.log` in the images) put at
    /// least `min` bytes of pages in place with userfaultfd (`UFFDIO_COPY`)
    /// and left no VMA of `pid` registered with it (`um` in VmFlags, see
    /// proc(5) smaps).
    pub fn assert_pages_copied_with_userfaultfd(&self, pid: i32, min: u64) {
        let log = fs::read_to_string(self.images().join("restore.log")).unwrap_or_default();
        // "pid P: N bytes of pages copied with userfaultfd, K runs left to read"
        let copied: u64 = log
            .lines()
            .filter(|l| l.contains(" bytes of pages copied with userfaultfd"))
            .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .sum();
        if copied < min {
            self.fail(&format!(
                "restore copied {copied} bytes with userfaultfd, expected at least {min}"
            ));
        }
        let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        if let Some(l) = smaps
            .lines()
            .find(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "um"))
        {
            self.fail(&format!(
                "pid {pid}: a VMA is still registered with userfaultfd: {l}"
            ));
        }
    }

    /// Fails unless `pid` is running: not stopped, not traced, not a zombie.
    pub fn assert_running_untouched(&self, pid: i32, when: &str) {
        let ok = wait_for(Duration::from_secs(3), || {
            matches!(proc_state(pid), Some('R' | 'S' | 'D')) && tracer_pid(pid) == Some(0)
        });
        if !ok {
            self.fail(&format!(
                "{when}: pid {pid} should be running, untraced: {}",
                describe(pid)
            ));
        }
    }
}

impl Drop for Test {
    fn drop(&mut self) {
        let pids = std::mem::take(&mut *self.pids.lock().unwrap_or_else(|e| e.into_inner()));
        for (pid, session) in pids {
            if session.is_none() || sid(pid) == session {
                kill_and_reap(pid);
            }
        }
        if std::thread::panicking() && std::env::var_os("CRIU_TEST_KEEP").is_some() {
            if let Some(tmp) = self.tmp.take() {
                eprintln!("{}: keeping {}", self.name, tmp.keep().display());
            }
        }
    }
}

/// A running `criu-workload`.
pub struct Workload {
    /// Its pid (kept across dump and restore).
    pub pid: i32,
    /// Its directory (`ready`, `progress`, `report`, data files).
    pub dir: PathBuf,
}

impl Workload {
    /// The counter it last wrote.
    pub fn progress(&self) -> Option<u64> {
        read_number(&self.dir.join("progress"))
    }
}

/// Reaps the original process after a dump, failing the test unless the
/// dump killed it.
pub fn reap_dumped(t: &Test, pid: i32) {
    match reap(pid, Duration::from_secs(10)) {
        Ok(st) if st.signal().is_some() => {}
        Ok(st) => t.fail(&format!(
            "after dump, pid {pid} exited by itself ({st}) instead of being killed"
        )),
        Err(e) => t.fail(&format!(
            "criu dump (without -R/-s) should kill pid {pid}: {e}"
        )),
    }
}

/// The python3 process tree several tests use: a root, three levels of
/// children (the first leads a second process group) and a zombie child of
/// the root that exited with code 7 (reaped, with its status written to
/// `reaped`, when the root gets SIGUSR1). Each live process writes
/// `c<level>` = "<pid> <counter>" every 50 ms in the directory `argv[1]`.
pub const TREE_PROGRAM: &str = r#"
import os, sys, time, signal
d = sys.argv[1]
z = os.fork()
if z == 0:
    os._exit(7)
def reap(*a):
    p, s = os.waitpid(z, 0)
    open(d + "/reaped", "w").write(str(os.waitstatus_to_exitcode(s)))
signal.signal(signal.SIGUSR1, reap)
lvl = 0
for i in range(3):
    c = os.fork()
    if c:
        break
    lvl += 1
    if lvl == 1:
        os.setpgid(0, 0)
n = 0
while True:
    n += 1
    open(d + f"/c{lvl}.tmp", "w").write(f"{os.getpid()} {n}")
    os.replace(d + f"/c{lvl}.tmp", d + f"/c{lvl}")
    time.sleep(0.05)
"#;

/// The `c<level>` file of a counting process tree ([`TREE_PROGRAM`] and
/// the other trees of the tests): its pid and counter.
pub fn level_counter(dir: &Path, lvl: u32) -> Option<(i32, u64)> {
    let text = read(&dir.join(format!("c{lvl}")))?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A python3 parent that maps 4 MiB of `MAP_SHARED|MAP_ANONYMOUS` memory
/// (a pattern in every page) and `DIR/shared.dat` (4096 bytes, must exist)
/// `MAP_SHARED`, then forks. Each process writes `DIR/<role>` (`parent`,
/// `child`) every 50 ms: "pid n theirs file ok", where `n` is its counter, `theirs` the other's counter as read from the shared
/// anonymous memory, `file` the child's counter as read from the shared file
/// mapping, `ok` whether every page still holds its pattern. After the fork
/// the parent unmaps the first page of the 4 MiB (it keeps the object from
/// offset 4096 on; only the child still has page 0) and maps 1 MiB of
/// shared anonymous memory of its own.
pub const SHARED_MEMORY_PROGRAM: &str = r#"
import ctypes, mmap, os, sys, time
d = sys.argv[1]
N = 4 << 20
m = mmap.mmap(-1, N)
for i in range(4096, N, 4096):
    m[i:i+8] = i.to_bytes(8, "little")
m[100:106] = b"page 0"
f = open(d + "/shared.dat", "r+b")
fm = mmap.mmap(f.fileno(), 4096)
f.close()
c = os.fork()
role = "child" if c == 0 else "parent"
if c:
    own = mmap.mmap(-1, 1 << 20)
    own[4096:4100] = b"mine"
    # The parent keeps the object from its second page on only.
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.munmap(ctypes.c_void_p(base), 4096) != 0:
        raise OSError(ctypes.get_errno(), "munmap")
mine, theirs = (4096 + 8, 4096 + 16) if c == 0 else (4096 + 16, 4096 + 8)
n = 0
while True:
    n += 1
    m[mine:mine+8] = n.to_bytes(8, "little")
    if c == 0:
        fm[0:8] = n.to_bytes(8, "little")
    t = int.from_bytes(m[theirs:theirs+8], "little")
    fv = int.from_bytes(fm[0:8], "little")
    ok = all(int.from_bytes(m[i:i+8], "little") == i for i in range(4096, N, 4096))
    if c:
        ok = ok and own[4096:4100] == b"mine"
    else:
        ok = ok and m[100:106] == b"page 0"
    open(d + f"/{role}.tmp", "w").write(f"{os.getpid()} {n} {t} {fv} {int(ok)}")
    os.replace(d + f"/{role}.tmp", d + f"/{role}")
    time.sleep(0.05)
"#;

/// One [`SHARED_MEMORY_PROGRAM`] report: pid, own counter, the other's counter as seen, the file
/// value as seen, pages intact.
#[derive(Debug, Clone, Copy)]
pub struct SharingReport {
    /// Its pid.
    pub pid: i32,
    /// Its own counter.
    pub n: u64,
    /// The other process's counter, read from the shared anonymous memory.
    pub theirs: u64,
    /// The child's counter, read from the shared file mapping.
    pub file: u64,
    /// Every page of the shared memory still holds its pattern.
    pub ok: bool,
}

pub fn sharing_report(dir: &Path, role: &str) -> Option<SharingReport> {
    let text = read(&dir.join(role))?;
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 5).then(|| SharingReport {
        pid: v[0] as i32,
        n: v[1],
        theirs: v[2],
        file: v[3],
        ok: v[4] == 1,
    })
}

/// Fails unless each process of a [`SHARED_MEMORY_PROGRAM`] tree in `w`
/// sees the other's counter (and the child's file counter) go past `since`
/// (parent's, child's), with every page intact.
pub fn assert_sharing(t: &Test, w: &Path, since: (u64, u64), when: &str) {
    let ok = wait_for(Duration::from_secs(10), || {
        let (Some(p), Some(c)) = (sharing_report(w, "parent"), sharing_report(w, "child")) else {
            return false;
        };
        p.ok && c.ok && p.theirs > since.1 + 3 && p.file > since.1 + 3 && c.theirs > since.0 + 3
    });
    if !ok {
        t.fail(&format!(
            "{when}: the processes do not see each other's writes: parent {:?}, child {:?} (counters at dump: {since:?})",
            sharing_report(w, "parent"),
            sharing_report(w, "child")
        ));
    }
}
