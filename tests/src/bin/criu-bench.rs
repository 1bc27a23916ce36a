//! `criu-bench`: how fast criu dumps and restores, against `dd`, and how its
//! cost grows with the shape of the process. Needs root (like criu today).
//!
//! ```text
//! criu-bench [--sizes 64,256,1024] [--rounds 3] [--dirs /dev/shm,/var/tmp]
//!            [--shapes vmas=1000,fds=10000,threads=100,procs=100]
//!            [--bin-dir DIR]
//! ```
//!
//! For each images filesystem (a fresh directory under each of `--dirs`) and
//! each size N (MiB), every round measures:
//!
//! * `dd if=/dev/zero of=DIR/dd.tmp bs=1M count=N conv=fsync`, and the same
//!   without `conv=fsync` (criu fsyncs its images, so the fair base is the
//!   first one; the ratios use it);
//! * `criu dump -t PID -D DIR -R` on a workload (this program in `hog` mode)
//!   holding N MiB of touched, non-zero anonymous memory. The workload writes
//!   a `CLOCK_MONOTONIC` timestamp to a shared stamp file every 1 ms and
//!   keeps the largest gap between two of its ticks: the largest gap around
//!   the `-R` dump is the time it was frozen (measured from inside, not from
//!   criu's log);
//! * `criu dump -t PID -D DIR` (the workload is killed), the image size, and
//!   `criu restore -D DIR -d` until it returns (the restored workload is then
//!   checked to be ticking, untimed, and killed).
//!
//! criu's peak RSS: the bench runs criu itself and waits for it with
//! `wait4`, whose `ru_maxrss` is the maximum of criu's own peak and that of
//! the children it waited for (the helper); while criu runs, a thread polls
//! `VmHWM` of the frontend and of its child, the helper, every 2 ms, to say
//! which one it was.
//!
//! Then each `--shapes` item (`vmas=K`: K one-page mappings with alternating
//! protections; `fds=K`: K descriptors on /dev/null; `threads=K`: K threads;
//! `procs=K`: K processes) is dumped and restored on /dev/shm with a 1 MiB
//! workload, next to a baseline workload without it; the per-item cost is
//! (time − baseline) / K. A shape whose dump or restore fails prints
//! "criu failed" with the first line of its error.
//!
//! Times are wall-clock, best and median of `--rounds`. No time is asserted.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const PAGE: usize = 4096;

/// Stamp file layout, u64 words: written by the workload...
const W_NOW: usize = 0;
const W_MAX_GAP: usize = 1;
const W_GEN_ACK: usize = 2;
const W_READY: usize = 3;
/// ... and by the bench: a new generation resets the largest gap.
const W_GEN: usize = 4;
const STAMP_LEN: u64 = 4096;

type Res<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hog") {
        if let Err(e) = hog(&args[1..]) {
            eprintln!("criu-bench hog: {e}");
            std::process::exit(1);
        }
        return;
    }
    match bench(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("criu-bench: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------
// Shapes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShapeKind {
    Vmas,
    Fds,
    Threads,
    Procs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    kind: ShapeKind,
    count: u64,
}

impl Shape {
    fn parse(s: &str) -> Res<Shape> {
        let (k, n) = s
            .split_once('=')
            .ok_or_else(|| format!("shape {s:?}: expected KIND=COUNT"))?;
        let kind = match k {
            "vmas" => ShapeKind::Vmas,
            "fds" => ShapeKind::Fds,
            "threads" => ShapeKind::Threads,
            "procs" => ShapeKind::Procs,
            _ => return Err(format!("shape {s:?}: kind is vmas, fds, threads or procs")),
        };
        let count: u64 = n.parse().map_err(|_| format!("shape {s:?}: bad count"))?;
        if count == 0 {
            return Err(format!("shape {s:?}: count must be positive"));
        }
        Ok(Shape { kind, count })
    }

    fn unit(&self) -> &'static str {
        match self.kind {
            ShapeKind::Vmas => "VMA",
            ShapeKind::Fds => "fd",
            ShapeKind::Threads => "thread",
            ShapeKind::Procs => "process",
        }
    }

    fn arg(&self) -> String {
        let k = match self.kind {
            ShapeKind::Vmas => "vmas",
            ShapeKind::Fds => "fds",
            ShapeKind::Threads => "threads",
            ShapeKind::Procs => "procs",
        };
        format!("{k}={}", self.count)
    }
}

// ---------------------------------------------------------------------------
// The workload (`criu-bench hog STAMP MIB [SHAPE]`)

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn mmap_anon(len: usize, prot: i32) -> Res<*mut u8> {
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err("mmap"));
    }
    Ok(p.cast())
}

fn hog(args: &[String]) -> Res<()> {
    let [stamp, mib, rest @ ..] = args else {
        return Err("usage: criu-bench hog STAMP MIB [SHAPE]".into());
    };
    let mib: usize = mib.parse().map_err(|_| "bad MIB".to_string())?;
    let shape = rest.first().map(|s| Shape::parse(s)).transpose()?;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(stamp)
        .map_err(|e| format!("{stamp}: {e}"))?;

    // N MiB of touched, non-zero anonymous memory: every byte written.
    let len = mib * MIB as usize;
    if len > 0 {
        let p = mmap_anon(len, libc::PROT_READ | libc::PROT_WRITE)?;
        // SAFETY: p..p+len is our fresh writable mapping.
        unsafe {
            std::ptr::write_bytes(p, 0xA5, len);
            for i in (0..len).step_by(PAGE) {
                p.add(i).cast::<u64>().write(i as u64 | 1);
            }
        }
    }

    if let Some(s) = shape {
        let k = s.count as usize;
        match s.kind {
            ShapeKind::Vmas => {
                // K pages, every other one read-only: K separate mappings.
                let p = mmap_anon(k * PAGE, libc::PROT_READ | libc::PROT_WRITE)?;
                for i in 0..k {
                    // SAFETY: page i of our fresh writable mapping.
                    unsafe { p.add(i * PAGE).cast::<u64>().write(i as u64 + 1) };
                }
                for i in (1..k).step_by(2) {
                    // SAFETY: changes protection of page i of our own mapping.
                    let r =
                        unsafe { libc::mprotect(p.add(i * PAGE).cast(), PAGE, libc::PROT_READ) };
                    if r != 0 {
                        return Err(os_err("mprotect"));
                    }
                }
            }
            ShapeKind::Fds => {
                let mut rl = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: rl is a valid rlimit to fill, then to read.
                unsafe {
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
                    rl.rlim_cur = rl.rlim_max;
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(os_err("setrlimit(RLIMIT_NOFILE)"));
                    }
                }
                for _ in 0..k {
                    let f = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
                    std::mem::forget(f);
                }
            }
            ShapeKind::Threads => {
                for _ in 1..k {
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(|| loop {
                            std::thread::sleep(Duration::from_secs(1));
                        })
                        .map_err(|e| format!("thread: {e}"))?;
                }
            }
            ShapeKind::Procs => {
                for _ in 1..k {
                    // SAFETY: the hog is single-threaded here; the child only
                    // calls async-signal-safe functions.
                    let pid = unsafe { libc::fork() };
                    if pid < 0 {
                        return Err(os_err("fork"));
                    }
                    if pid == 0 {
                        loop {
                            // SAFETY: pause has no preconditions.
                            unsafe { libc::pause() };
                        }
                    }
                }
            }
        }
    }

    // Tick every 1 ms: the largest gap between two ticks since the bench
    // last asked (a new generation in W_GEN) is the longest freeze.
    let mut words = [0u64; 4];
    words[W_READY] = std::process::id() as u64;
    let mut gen = u64::MAX;
    let mut last = now_ns();
    let mut max_gap = 0u64;
    let mut g = [0u8; 8];
    loop {
        let now = now_ns();
        let gap = now - last;
        last = now;
        if file.read_exact_at(&mut g, (W_GEN * 8) as u64).is_ok() {
            let want = u64::from_ne_bytes(g);
            if want != gen {
                gen = want;
                max_gap = 0;
            } else {
                max_gap = max_gap.max(gap);
            }
        }
        words[W_NOW] = now;
        words[W_MAX_GAP] = max_gap;
        words[W_GEN_ACK] = gen;
        let mut b = [0u8; 32];
        for (i, w) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
        }
        let _ = file.write_all_at(&b, 0);
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// Stamp file, seen from the bench

struct Stamp {
    path: PathBuf,
    file: File,
    gen: u64,
}

impl Stamp {
    fn create(path: PathBuf) -> Res<Stamp> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.set_len(STAMP_LEN)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Stamp { path, file, gen: 0 })
    }

    fn word(&self, i: usize) -> u64 {
        let mut b = [0u8; 8];
        match self.file.read_exact_at(&mut b, (i * 8) as u64) {
            Ok(()) => u64::from_ne_bytes(b),
            Err(_) => 0,
        }
    }

    /// Starts a new generation and waits until the workload has seen it.
    fn reset(&mut self) -> Res<()> {
        self.gen += 1;
        self.file
            .write_all_at(&self.gen.to_ne_bytes(), (W_GEN * 8) as u64)
            .map_err(|e| e.to_string())?;
        let gen = self.gen;
        wait_until(Duration::from_secs(5), || self.word(W_GEN_ACK) == gen)
            .then_some(())
            .ok_or_else(|| "workload does not tick".to_string())
    }

    /// Waits for a tick later than `after` (monotonic ns).
    fn ticked_after(&self, after: u64, timeout: Duration) -> bool {
        wait_until(timeout, || self.word(W_NOW) > after)
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

// ---------------------------------------------------------------------------
// Running commands

/// One finished command: status, wall time, peak RSS.
struct Ran {
    ok: bool,
    status: i32,
    secs: f64,
    /// `ru_maxrss` from wait4 (KiB): max of the process and its waited children.
    maxrss_kib: u64,
    /// Largest polled VmHWM of the process itself (KiB).
    self_hwm_kib: u64,
    /// Largest polled VmHWM of its children (KiB): criu's helper.
    child_hwm_kib: u64,
    stderr: String,
}

fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn children_of(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Runs `cmd` to completion with stdout and stderr to files in `work`,
/// polling its and its children's VmHWM when `poll` is set.
fn run(cmd: &mut Command, work: &Path, poll: bool) -> Res<Ran> {
    let err_path = work.join("cmd.stderr");
    let err = File::create(&err_path).map_err(|e| e.to_string())?;
    let out = File::create(work.join("cmd.stdout")).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let pid = child.id() as i32;
    let stop = Arc::new(AtomicBool::new(false));
    let self_hwm = Arc::new(AtomicU64::new(0));
    let child_hwm = Arc::new(AtomicU64::new(0));
    let poller = poll.then(|| {
        let (stop, self_hwm, child_hwm) = (stop.clone(), self_hwm.clone(), child_hwm.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(h) = vm_hwm_kib(pid) {
                    self_hwm.fetch_max(h, Ordering::Relaxed);
                }
                for c in children_of(pid) {
                    if let Some(h) = vm_hwm_kib(c) {
                        child_hwm.fetch_max(h, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and ru are valid to write; pid is our child.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = poller {
        let _ = p.join();
    }
    if r != pid {
        return Err(os_err("wait4"));
    }
    // The Child was reaped by wait4 above; dropping it does not wait.
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(Ran {
        ok: code == 0,
        status: code,
        secs,
        maxrss_kib: ru.ru_maxrss as u64,
        self_hwm_kib: self_hwm.load(Ordering::Relaxed),
        child_hwm_kib: child_hwm.load(Ordering::Relaxed),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

fn dd(dir: &Path, mib: u64, fsync: bool, work: &Path) -> Res<f64> {
    let target = dir.join("dd.tmp");
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"));
    if fsync {
        cmd.arg("conv=fsync");
    }
    let r = run(&mut cmd, work, false)?;
    let _ = fs::remove_file(&target);
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if !r.ok {
        return Err(format!(
            "dd failed ({}): {}",
            r.status,
            first_line(&r.stderr)
        ));
    }
    Ok(r.secs)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Reaps every exited child (the bench is a subreaper: restored workloads
/// and their orphans end up here).
fn reap_all() {
    loop {
        let mut st = 0;
        // SAFETY: st is valid to write.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// Kills the workload's process group (its whole tree) and reaps it.
fn kill_tree(pid: i32) {
    // SAFETY: signals our own workload's process group, then the pid.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
    // Until no process of the group is left, zombies included: children
    // still exiting when the root is gone become our zombies a moment
    // later (the bench is a subreaper) and would hold their PIDs at the
    // next restore.
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        reap_all();
        // SAFETY: signal 0 only checks whether the group has a member.
        let left = unsafe { libc::kill(-pid, 0) } == 0;
        if !left && fs::metadata(format!("/proc/{pid}")).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    reap_all();
}

// ---------------------------------------------------------------------------
// The bench

struct Opts {
    sizes: Vec<u64>,
    rounds: usize,
    dirs: Vec<PathBuf>,
    shapes: Vec<Shape>,
    bin_dir: PathBuf,
}

fn parse_opts(args: &[String]) -> Res<Opts> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut o = Opts {
        sizes: vec![64, 256, 1024],
        rounds: 3,
        dirs: vec!["/dev/shm".into(), "/var/tmp".into()],
        shapes: ["vmas=1000", "fds=10000", "threads=100", "procs=100"]
            .iter()
            .map(|s| Shape::parse(s))
            .collect::<Res<_>>()?,
        bin_dir: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let list = |v: &str| -> Vec<String> {
        if v == "none" || v.is_empty() {
            Vec::new()
        } else {
            v.split(',').map(str::to_owned).collect()
        }
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--sizes" => {
                o.sizes = list(&val()?)
                    .iter()
                    .map(|s| s.parse().map_err(|_| format!("bad size {s:?}")))
                    .collect::<Res<_>>()?
            }
            "--rounds" => {
                o.rounds = val()?.parse().map_err(|_| "bad --rounds".to_string())?;
                if o.rounds == 0 {
                    return Err("--rounds must be positive".into());
                }
            }
            "--dirs" => o.dirs = list(&val()?).into_iter().map(PathBuf::from).collect(),
            "--shapes" => {
                o.shapes = list(&val()?)
                    .iter()
                    .map(|s| Shape::parse(s))
                    .collect::<Res<_>>()?
            }
            "--bin-dir" => o.bin_dir = PathBuf::from(val()?),
            "-h" | "--help" => {
                println!(
                    "usage: criu-bench [--sizes MIB,...] [--rounds N] [--dirs DIR,...] \
                     [--shapes KIND=N,...|none] [--bin-dir DIR]\n\
                     KIND: vmas, fds, threads, procs. Needs root."
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?} (try --help)")),
        }
    }
    Ok(o)
}

struct Ctx {
    criu: PathBuf,
    exe: PathBuf,
    /// Private directory on tmpfs: the stamp file, command output.
    work: tempfile::TempDir,
    stamp: Stamp,
}

impl Ctx {
    /// Starts a workload and waits until it has filled its memory and ticks.
    fn spawn_hog(&mut self, mib: u64, shape: Option<Shape>) -> Res<i32> {
        self.stamp
            .file
            .write_all_at(&[0u8; 40], 0)
            .map_err(|e| e.to_string())?;
        self.stamp.gen = 0;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("hog").arg(&self.stamp.path).arg(mib.to_string());
        if let Some(s) = shape {
            cmd.arg(s.arg());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure only calls setsid and close_range, both
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("workload: {e}"))?;
        let pid = child.id() as i32;
        drop(child);
        let timeout = Duration::from_secs(30 + mib / 64);
        if !wait_until(timeout, || self.stamp.word(W_READY) == pid as u64) {
            kill_tree(pid);
            return Err(format!("workload pid {pid} did not become ready"));
        }
        self.stamp.reset()?;
        Ok(pid)
    }

    fn criu(&self, args: &[&str]) -> Res<Ran> {
        let mut cmd = Command::new(&self.criu);
        cmd.args(args).current_dir(self.work.path());
        run(&mut cmd, self.work.path(), true)
    }

    fn dump(&self, pid: i32, dir: &Path, leave_running: bool) -> Res<Ran> {
        let pid = pid.to_string();
        let dir = dir.to_str().ok_or("non-UTF-8 path")?;
        let mut args = vec!["dump", "-t", &pid, "-D", dir];
        if leave_running {
            args.push("-R");
        }
        self.criu(&args)
    }

    fn restore(&self, dir: &Path) -> Res<Ran> {
        let dir = dir.to_str().ok_or("non-UTF-8 path")?;
        self.criu(&["restore", "-D", dir, "-d"])
    }

    /// After a restore: the workload `pid` must tick again.
    fn check_restored(&self, pid: i32) -> Res<()> {
        let t = now_ns();
        if !self.stamp.ticked_after(t, Duration::from_secs(10)) {
            kill_tree(pid);
            return Err(format!("restored workload pid {pid} does not tick"));
        }
        Ok(())
    }
}

/// One round of the size benchmark.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    dd_fsync: f64,
    dd_plain: f64,
    dump_r: f64,
    freeze: f64,
    dump: f64,
    restore: f64,
    image_mib: f64,
    rss_wait4: u64,
    rss_front: u64,
    rss_helper: u64,
}

fn fresh_dir(d: &Path) -> Res<()> {
    let _ = fs::remove_dir_all(d);
    fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))
}

fn clean(d: &Path) {
    let _ = fs::remove_dir_all(d);
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

fn criu_failed(what: &str, r: &Ran) -> String {
    format!("{what} failed (exit {}): {}", r.status, r.stderr.trim_end())
}

fn rss_of(rounds: &mut Round, r: &Ran) {
    rounds.rss_wait4 = rounds.rss_wait4.max(r.maxrss_kib);
    rounds.rss_front = rounds.rss_front.max(r.self_hwm_kib);
    rounds.rss_helper = rounds.rss_helper.max(r.child_hwm_kib);
}

fn size_round(ctx: &mut Ctx, base: &Path, mib: u64) -> Res<Round> {
    let mut r = Round {
        dd_fsync: dd(base, mib, true, ctx.work.path())?,
        dd_plain: dd(base, mib, false, ctx.work.path())?,
        ..Round::default()
    };

    // Dump with -R: the freeze as seen from inside the workload.
    let pid = ctx.spawn_hog(mib, None)?;
    let dir = base.join("images");
    fresh_dir(&dir)?;
    ctx.stamp.reset()?;
    let ran = ctx.dump(pid, &dir, true)?;
    if !ran.ok {
        kill_tree(pid);
        return Err(criu_failed("criu dump -R", &ran));
    }
    let after = now_ns();
    if !ctx.stamp.ticked_after(after, Duration::from_secs(10)) {
        kill_tree(pid);
        return Err(format!("workload pid {pid} does not tick after dump -R"));
    }
    r.dump_r = ran.secs;
    r.freeze = ctx.stamp.word(W_MAX_GAP) as f64 / 1e9;
    rss_of(&mut r, &ran);
    clean(&dir);

    // Dump (the workload is killed), then restore.
    fresh_dir(&dir)?;
    let ran = ctx.dump(pid, &dir, false)?;
    if !ran.ok {
        kill_tree(pid);
        return Err(criu_failed("criu dump", &ran));
    }
    r.dump = ran.secs;
    r.image_mib = dir_bytes(&dir) as f64 / MIB as f64;
    rss_of(&mut r, &ran);
    kill_tree(pid);
    let ran = ctx.restore(&dir)?;
    if !ran.ok {
        kill_tree(pid);
        return Err(criu_failed("criu restore", &ran));
    }
    r.restore = ran.secs;
    rss_of(&mut r, &ran);
    ctx.check_restored(pid)?;
    kill_tree(pid);
    clean(&dir);
    Ok(r)
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn mem_available_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k / 1024)
        .unwrap_or(0)
}

fn size_table_header() {
    println!(
        "{:<10} {:>6} {:>6} | {:>14} {:>8} | {:>14} {:>7} {:>7} | {:>14} {:>7} | {:>9} {:>8} | {:>7} | {:>16}",
        "images on",
        "MiB",
        "",
        "dd fsync s",
        "dd s",
        "dump s",
        "dump/dd",
        "-R s",
        "restore s",
        "rst/dd",
        "freeze ms",
        "img MiB",
        "RSS MiB",
        "front/helper MiB"
    );
}

fn print_size_row(fs_name: &str, mib: u64, which: &str, rs: &[Round], f: fn(&[f64]) -> f64) {
    let col = |g: fn(&Round) -> f64| f(&rs.iter().map(g).collect::<Vec<_>>());
    let (ddf, ddp, dump, dump_r, rst) = (
        col(|r| r.dd_fsync),
        col(|r| r.dd_plain),
        col(|r| r.dump),
        col(|r| r.dump_r),
        col(|r| r.restore),
    );
    let rate = |s: f64| mib as f64 / s;
    let kib = |g: fn(&Round) -> u64| rs.iter().map(g).max().unwrap_or(0) as f64 / 1024.0;
    println!(
        "{:<10} {:>6} {:>6} | {:>6.3} {:>5.0}/s {:>8.3} | {:>6.3} {:>5.0}/s {:>7.2} {:>7.3} | {:>6.3} {:>5.0}/s {:>7.2} | {:>9.1} {:>8.1} | {:>7.1} | {:>7.1}/{:<8.1}",
        fs_name,
        mib,
        which,
        ddf,
        rate(ddf),
        ddp,
        dump,
        rate(dump),
        dump / ddf,
        dump_r,
        rst,
        rate(rst),
        rst / ddf,
        col(|r| r.freeze) * 1e3,
        col(|r| r.image_mib),
        kib(|r| r.rss_wait4),
        kib(|r| r.rss_front),
        kib(|r| r.rss_helper),
    );
}

/// Dump and restore of one workload on tmpfs; `None` if criu refused.
#[derive(Debug, Clone, Copy)]
struct ShapeRound {
    dump: f64,
    restore: f64,
    rss: u64,
}

fn shape_round(ctx: &mut Ctx, dir: &Path, shape: Option<Shape>) -> Res<Result<ShapeRound, String>> {
    let pid = ctx.spawn_hog(1, shape)?;
    fresh_dir(dir)?;
    let ran = ctx.dump(pid, dir, false)?;
    if !ran.ok {
        kill_tree(pid);
        clean(dir);
        return Ok(Err(format!("dump: {}", first_line(&ran.stderr))));
    }
    kill_tree(pid);
    let dump = ran.secs;
    let mut rss = ran.maxrss_kib;
    let ran = ctx.restore(dir)?;
    if !ran.ok {
        kill_tree(pid);
        clean(dir);
        return Ok(Err(format!("restore: {}", first_line(&ran.stderr))));
    }
    rss = rss.max(ran.maxrss_kib);
    ctx.check_restored(pid)?;
    kill_tree(pid);
    clean(dir);
    Ok(Ok(ShapeRound {
        dump,
        restore: ran.secs,
        rss,
    }))
}

fn bench(args: &[String]) -> Res<()> {
    let o = parse_opts(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (criu dump and restore run as root today)".into());
    }
    let criu = o.bin_dir.join("criu");
    if !criu.is_file() || !o.bin_dir.join("criu-helper").is_file() {
        return Err(format!(
            "criu and criu-helper not found in {} (build with `cargo build --release --workspace --bins`, or pass --bin-dir)",
            o.bin_dir.display()
        ));
    }
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(os_err("prctl(PR_SET_CHILD_SUBREAPER)"));
    }
    let work = tempfile::Builder::new()
        .prefix("criu-bench-work.")
        .tempdir_in("/dev/shm")
        .map_err(|e| format!("/dev/shm: {e}"))?;
    let stamp = Stamp::create(work.path().join("stamp"))?;
    let mut ctx = Ctx {
        criu,
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        work,
        stamp,
    };

    println!(
        "criu-bench: criu {}, {} round(s), best and median; times in seconds, rates in MiB/s",
        ctx.criu.display(),
        o.rounds
    );
    println!("dump/dd and rst/dd are against dd with conv=fsync; -R s is the dump with -R;");
    println!("freeze: longest gap seen by the workload's 1 ms ticker around the -R dump;");
    println!(
        "RSS: criu's peak (wait4 ru_maxrss: max of frontend and helper), then polled VmHWM of each"
    );
    // One untimed dump and restore first: page cache, binaries, allocator.
    let warm = ctx.work.path().join("warm-up");
    if let Err(e) = shape_round(&mut ctx, &warm, None)? {
        return Err(format!("warm-up: {e}"));
    }
    let mut results: Vec<(String, u64, Vec<Round>)> = Vec::new();
    if !o.sizes.is_empty() {
        size_table_header();
    }
    for d in &o.dirs {
        let base = tempfile::Builder::new()
            .prefix("criu-bench.")
            .tempdir_in(d)
            .map_err(|e| format!("{}: {e}", d.display()))?;
        let fs_name = d.display().to_string();
        for &mib in &o.sizes {
            let avail = mem_available_mib();
            if avail < 2 * mib + 1024 {
                println!(
                    "{fs_name:<10} {mib:>6}   skipped: {avail} MiB available, need {}",
                    2 * mib + 1024
                );
                continue;
            }
            let mut rs = Vec::new();
            for _ in 0..o.rounds {
                rs.push(size_round(&mut ctx, base.path(), mib)?);
            }
            print_size_row(&fs_name, mib, "best", &rs, best);
            if o.rounds > 1 {
                print_size_row(&fs_name, mib, "median", &rs, median);
            }
            let _ = io::stdout().flush();
            results.push((fs_name.clone(), mib, rs));
        }
    }

    if !o.shapes.is_empty() {
        let dir = ctx.work.path().join("shape-images");
        println!();
        println!("shape (images on /dev/shm, 1 MiB workload; per item = (median - baseline median) / count)");
        println!(
            "{:<14} | {:>8} {:>8} | {:>8} {:>8} | {:>12} {:>12} | {:>7}",
            "shape", "dump s", "best", "rst s", "best", "dump µs/item", "rst µs/item", "RSS MiB"
        );
        let mut base = Vec::new();
        for _ in 0..o.rounds {
            match shape_round(&mut ctx, &dir, None)? {
                Ok(r) => base.push(r),
                Err(e) => return Err(format!("baseline workload: {e}")),
            }
        }
        let (bd, br) = (
            median(&base.iter().map(|r| r.dump).collect::<Vec<_>>()),
            median(&base.iter().map(|r| r.restore).collect::<Vec<_>>()),
        );
        println!(
            "{:<14} | {:>8.4} {:>8.4} | {:>8.4} {:>8.4} | {:>12} {:>12} | {:>7.1}",
            "baseline",
            bd,
            best(&base.iter().map(|r| r.dump).collect::<Vec<_>>()),
            br,
            best(&base.iter().map(|r| r.restore).collect::<Vec<_>>()),
            "",
            "",
            base.iter().map(|r| r.rss).max().unwrap_or(0) as f64 / 1024.0
        );
        for s in &o.shapes {
            let mut rs = Vec::new();
            let mut refused = None;
            for _ in 0..o.rounds {
                match shape_round(&mut ctx, &dir, Some(*s))? {
                    Ok(r) => rs.push(r),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = refused {
                println!("{:<14} | criu failed ({e})", s.arg());
                continue;
            }
            let d: Vec<f64> = rs.iter().map(|r| r.dump).collect();
            let r: Vec<f64> = rs.iter().map(|r| r.restore).collect();
            let per =
                |t: f64, b: f64| format!("{:.1}/{}", (t - b) / s.count as f64 * 1e6, s.unit());
            println!(
                "{:<14} | {:>8.4} {:>8.4} | {:>8.4} {:>8.4} | {:>12} {:>12} | {:>7.1}",
                s.arg(),
                median(&d),
                best(&d),
                median(&r),
                best(&r),
                per(median(&d), bd),
                per(median(&r), br),
                rs.iter().map(|r| r.rss).max().unwrap_or(0) as f64 / 1024.0
            );
            let _ = io::stdout().flush();
        }
    }

    if !results.is_empty() {
        let worst = results
            .iter()
            .flat_map(|(_, _, rs)| rs.iter().map(|r| r.rss_wait4))
            .max()
            .unwrap_or(0);
        println!();
        println!(
            "criu peak RSS over all size runs: {:.1} MiB (target < 32 MiB)",
            worst as f64 / 1024.0
        );
    }
    Ok(())
}
