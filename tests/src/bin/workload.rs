//! `criu-workload DIR`: a process with a lot of state for criu to save.
//!
//! It sets up memory patterns, a private file mapping, descriptors with
//! particular offsets and flags, signal handlers, a blocked signal, an
//! interval timer, a POSIX timer and an alternate signal stack; writes
//! `DIR/ready` (its pid) and then loops forever, writing an incrementing
//! counter to `DIR/progress` every 10 ms.
//!
//! On SIGUSR2 it checks that all of that state is still what it set up and
//! writes `DIR/report`: `OK counter=N` or `FAIL: ...` listing every difference.
//! It keeps looping afterwards; another SIGUSR2 checks again.
//!
//! `criu-workload --vfork` is another target: a tree with a task waiting
//! in vfork(2) (see `vfork_tree`).

use std::ffi::CString;
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
const ANON_LEN: usize = 8 * MIB;
const ZERO_LEN: usize = MIB;
const UNTOUCHED_LEN: usize = MIB;
const HEAP_LEN: usize = 100_000;
const MAPPED_LEN: usize = 64 * 1024;
const DIRTY_PAGES: [usize; 3] = [0, 5, 15];
const INPUT_LEN: usize = 4096;
const INPUT_OFFSET: i64 = 1234;
const DEVNULL_FD: i32 = 42;
const ALTSTACK_LEN: usize = 64 * 1024;
const ITIMER_INTERVAL_US: i64 = 50_000;
const POSIX_TIMER_INTERVAL_NS: i64 = 100_000_000;

static USR1_COUNT: AtomicU64 = AtomicU64::new(0);
static CHECK_REQUESTED: AtomicBool = AtomicBool::new(false);
static ALARM_TICKS: AtomicU64 = AtomicU64::new(0);
static POSIX_TICKS: AtomicU64 = AtomicU64::new(0);

/// The pattern of the 8 MiB anonymous region, per u64 index.
fn anon_pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The pattern of the heap vector, per element.
fn heap_pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xDEAD_BEEF_0BAD_F00D
}

/// The content of `mapped.dat` (and of `input.dat`), per byte offset.
fn file_pattern(off: usize) -> u8 {
    (off % 251) as u8
}

/// What the workload writes over the dirty pages of its private mapping.
fn dirty_pattern(off: usize) -> u8 {
    file_pattern(off) ^ 0xA5
}

extern "C" fn on_usr1(_: libc::c_int) {
    USR1_COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_usr2(_: libc::c_int) {
    CHECK_REQUESTED.store(true, Ordering::SeqCst);
}

extern "C" fn on_alarm(_: libc::c_int) {
    ALARM_TICKS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_posix_timer(_: libc::c_int) {
    POSIX_TICKS.fetch_add(1, Ordering::SeqCst);
}

/// Turns a `-1` return into the last OS error, naming the operation.
fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret == -1 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(ret)
    }
}

fn install_handler(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int),
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = flags;
    // SAFETY: sa_mask is a valid sigset_t owned by `sa`.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised; the old action is not requested.
    let r = unsafe { libc::sigaction(sig, &sa, ptr::null_mut()) };
    check(r, "sigaction")?;
    Ok(())
}

/// An anonymous private read-write mapping that lives for the whole run.
fn map_anon(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::other(format!(
            "mmap anon: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(p.cast())
}

/// Everything the workload set up, to check against later.
struct State {
    dir: PathBuf,
    anon: *mut u64,
    zeros: *mut u8,
    untouched: *mut u8,
    heap: Vec<u64>,
    mapped: *mut u8,
    input_fd: i32,
    log_fd: i32,
    progress: fs::File,
    timer: libc::timer_t,
    altstack: libc::stack_t,
}

fn setup(dir: &Path) -> io::Result<State> {
    // Memory: a patterned region, an explicitly zeroed one, an untouched one.
    let anon = map_anon(ANON_LEN)?.cast::<u64>();
    for i in 0..ANON_LEN / 8 {
        // SAFETY: i < ANON_LEN / 8, inside the mapping just created.
        unsafe { anon.add(i).write(anon_pattern(i)) };
    }
    let zeros = map_anon(ZERO_LEN)?;
    for off in (0..ZERO_LEN).step_by(8) {
        // SAFETY: off + 8 <= ZERO_LEN, inside the mapping; volatile so the
        // zero writes really fault the pages in.
        unsafe { zeros.add(off).cast::<u64>().write_volatile(0) };
    }
    let untouched = map_anon(UNTOUCHED_LEN)?;
    let heap: Vec<u64> = (0..HEAP_LEN).map(heap_pattern).collect();

    // A private writable file mapping with three dirty pages.
    let mapped_path = dir.join("mapped.dat");
    let content: Vec<u8> = (0..MAPPED_LEN).map(file_pattern).collect();
    fs::write(&mapped_path, &content)?;
    let mapped = {
        let f = fs::File::open(&mapped_path)?;
        // SAFETY: maps a fresh private copy of the file; the descriptor may
        // be closed afterwards (the mapping keeps the file).
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                MAPPED_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::other(format!(
                "mmap mapped.dat: {}",
                io::Error::last_os_error()
            )));
        }
        p.cast::<u8>()
    };
    for page in DIRTY_PAGES {
        for off in page * PAGE..(page + 1) * PAGE {
            // SAFETY: off < MAPPED_LEN, inside the private mapping.
            unsafe { mapped.add(off).write(dirty_pattern(off)) };
        }
    }

    // Descriptors.
    let input_path = dir.join("input.dat");
    fs::write(
        &input_path,
        (0..INPUT_LEN).map(file_pattern).collect::<Vec<u8>>(),
    )?;
    let input_fd = open(&input_path, libc::O_RDONLY, 0)?;
    // SAFETY: plain lseek on a descriptor we own.
    if unsafe { libc::lseek(input_fd, INPUT_OFFSET, libc::SEEK_SET) } != INPUT_OFFSET {
        return Err(io::Error::other(format!(
            "lseek input.dat: {}",
            io::Error::last_os_error()
        )));
    }
    let log_fd = open(
        &dir.join("log.txt"),
        libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC | libc::O_CREAT,
        0o644,
    )?;
    let null_fd = open(Path::new("/dev/null"), libc::O_RDWR, 0)?;
    // SAFETY: dup2 onto a number the workload does not otherwise use.
    check(unsafe { libc::dup2(null_fd, DEVNULL_FD) }, "dup2 /dev/null")?;
    // SAFETY: null_fd is ours and no longer needed.
    unsafe { libc::close(null_fd) };
    let progress = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("progress"))?;

    // Signals.
    install_handler(libc::SIGUSR1, on_usr1, libc::SA_RESTART)?;
    install_handler(libc::SIGUSR2, on_usr2, libc::SA_RESTART)?;
    install_handler(libc::SIGALRM, on_alarm, libc::SA_RESTART)?;
    install_handler(libc::SIGRTMIN(), on_posix_timer, libc::SA_RESTART)?;
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGWINCH);
    }
    // SAFETY: `set` was initialised above.
    let r = unsafe { libc::sigprocmask(libc::SIG_BLOCK, set.as_ptr(), ptr::null_mut()) };
    check(r, "sigprocmask")?;

    // Alternate signal stack.
    let stack = map_anon(ALTSTACK_LEN)?;
    let altstack = libc::stack_t {
        ss_sp: stack.cast(),
        ss_flags: 0,
        ss_size: ALTSTACK_LEN,
    };
    // SAFETY: the stack memory is a mapping that lives for the whole run.
    let r = unsafe { libc::sigaltstack(&altstack, ptr::null_mut()) };
    check(r, "sigaltstack")?;

    // Interval timer.
    let interval = libc::timeval {
        tv_sec: 0,
        tv_usec: ITIMER_INTERVAL_US,
    };
    let it = libc::itimerval {
        it_interval: interval,
        it_value: interval,
    };
    // SAFETY: `it` is a valid itimerval; the old value is not requested.
    let r = unsafe { libc::setitimer(libc::ITIMER_REAL, &it, ptr::null_mut()) };
    check(r, "setitimer")?;

    // POSIX timer.
    // SAFETY: an all-zero sigevent is valid; the fields used are set below.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_SIGNAL;
    sev.sigev_signo = libc::SIGRTMIN();
    let mut timer: libc::timer_t = ptr::null_mut();
    // SAFETY: `sev` is initialised and `timer` is a valid out-parameter.
    let r = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) };
    check(r, "timer_create")?;
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: POSIX_TIMER_INTERVAL_NS,
    };
    let spec = libc::itimerspec {
        it_interval: ts,
        it_value: ts,
    };
    // SAFETY: `timer` was created above; `spec` is valid.
    let r = unsafe { libc::timer_settime(timer, 0, &spec, ptr::null_mut()) };
    check(r, "timer_settime")?;

    Ok(State {
        dir: dir.to_path_buf(),
        anon,
        zeros,
        untouched,
        heap,
        mapped,
        input_fd,
        log_fd,
        progress,
        timer,
        altstack,
    })
}

fn open(path: &Path, flags: libc::c_int, mode: libc::c_uint) -> io::Result<i32> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe { libc::open(c.as_ptr(), flags, mode) };
    check(r, &format!("open {}", path.display()))
}

/// Sleeps `d` even when signal handlers interrupt the sleep.
fn sleep_through_signals(d: Duration) {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left);
    }
}

/// Sleeps about 10 ms; a signal may cut it short, which is fine.
fn nap() {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    // SAFETY: `ts` is valid; the remaining time is not requested.
    unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
}

fn fd_flags(fd: i32) -> (i32, i32) {
    // SAFETY: fcntl queries on a descriptor number; -1 on error is reported.
    unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    }
}

fn verify(st: &State, counter: u64) -> Vec<String> {
    let mut fails = Vec::new();

    // Memory.
    let mut bad = 0usize;
    let mut first = None;
    for i in 0..ANON_LEN / 8 {
        // SAFETY: i < ANON_LEN / 8, inside the mapping.
        let v = unsafe { st.anon.add(i).read_volatile() };
        if v != anon_pattern(i) {
            bad += 1;
            first.get_or_insert((i, v));
        }
    }
    if let Some((i, v)) = first {
        fails.push(format!(
            "anon 8MiB region: {bad} words differ, first at byte {:#x}: {v:#x} != {:#x}",
            i * 8,
            anon_pattern(i)
        ));
    }
    for (name, p, len) in [
        ("zeroed", st.zeros, ZERO_LEN),
        ("untouched", st.untouched, UNTOUCHED_LEN),
    ] {
        // SAFETY: p..p+len is one of our mappings.
        let s = unsafe { std::slice::from_raw_parts(p, len) };
        if let Some(off) = s.iter().position(|&b| b != 0) {
            fails.push(format!(
                "{name} 1MiB region: non-zero byte {:#x} at offset {off:#x}",
                s[off]
            ));
        }
    }
    if st.heap.len() != HEAP_LEN {
        fails.push(format!("heap vec: length {} != {HEAP_LEN}", st.heap.len()));
    }
    if let Some(i) = (0..st.heap.len()).find(|&i| st.heap[i] != heap_pattern(i)) {
        fails.push(format!(
            "heap vec: element {i} is {:#x}, expected {:#x}",
            st.heap[i],
            heap_pattern(i)
        ));
    }

    // The private file mapping.
    // SAFETY: the mapping is MAPPED_LEN bytes long and lives for the run.
    let m = unsafe { std::slice::from_raw_parts(st.mapped, MAPPED_LEN) };
    let file = fs::read(st.dir.join("mapped.dat")).unwrap_or_default();
    for page in 0..MAPPED_LEN / PAGE {
        let range = page * PAGE..(page + 1) * PAGE;
        let dirty = DIRTY_PAGES.contains(&page);
        let diff = range.clone().find(|&off| {
            let want = if dirty {
                dirty_pattern(off)
            } else {
                file_pattern(off)
            };
            m[off] != want
        });
        if let Some(off) = diff {
            let kind = if dirty { "dirty" } else { "clean" };
            fails.push(format!(
                "mapped.dat {kind} page {page}: byte at {off:#x} is {:#x}",
                m[off]
            ));
        }
        if !dirty && file.get(range.clone()) != Some(&m[range]) {
            fails.push(format!(
                "mapped.dat clean page {page} differs from the file"
            ));
        }
    }

    // Descriptors.
    // SAFETY: lseek query on a descriptor number.
    let pos = unsafe { libc::lseek(st.input_fd, 0, libc::SEEK_CUR) };
    if pos != INPUT_OFFSET {
        fails.push(format!(
            "input.dat fd {}: offset {pos} != {INPUT_OFFSET}",
            st.input_fd
        ));
    }
    let (fl, fd) = fd_flags(st.input_fd);
    if fl == -1 || fl & libc::O_ACCMODE != libc::O_RDONLY || fd & libc::FD_CLOEXEC != 0 {
        fails.push(format!(
            "input.dat fd {}: flags {fl:#o} fd flags {fd} (want O_RDONLY, no cloexec)",
            st.input_fd
        ));
    }
    let (fl, fd) = fd_flags(st.log_fd);
    if fl == -1
        || fl & libc::O_ACCMODE != libc::O_WRONLY
        || fl & libc::O_APPEND == 0
        || fd & libc::FD_CLOEXEC == 0
    {
        fails.push(format!(
            "log.txt fd {}: flags {fl:#o} fd flags {fd} (want O_WRONLY|O_APPEND, cloexec)",
            st.log_fd
        ));
    }
    let link = |fd: i32| fs::read_link(format!("/proc/self/fd/{fd}")).ok();
    for (fd, want) in [
        (st.input_fd, st.dir.join("input.dat")),
        (st.log_fd, st.dir.join("log.txt")),
        (st.progress.as_raw_fd(), st.dir.join("progress")),
        (DEVNULL_FD, PathBuf::from("/dev/null")),
    ] {
        if link(fd).as_deref() != Some(want.as_path()) {
            fails.push(format!(
                "fd {fd} points to {:?}, expected {}",
                link(fd),
                want.display()
            ));
        }
    }
    let (fl, _) = fd_flags(DEVNULL_FD);
    if fl == -1 || fl & libc::O_ACCMODE != libc::O_RDWR {
        fails.push(format!("fd {DEVNULL_FD}: flags {fl:#o}, expected O_RDWR"));
    }

    // Signal handlers and mask.
    // SAFETY: query only; `old` is a valid out-parameter.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    unsafe { libc::sigaction(libc::SIGUSR1, ptr::null(), &mut old) };
    if old.sa_sigaction != on_usr1 as extern "C" fn(libc::c_int) as usize
        || old.sa_flags & libc::SA_RESTART == 0
    {
        fails.push(format!(
            "SIGUSR1 action: handler {:#x} flags {:#x} (want {:#x} with SA_RESTART)",
            old.sa_sigaction, old.sa_flags, on_usr1 as extern "C" fn(libc::c_int) as usize
        ));
    }
    let before = USR1_COUNT.load(Ordering::SeqCst);
    // SAFETY: raising a signal whose handler only bumps an atomic.
    unsafe { libc::raise(libc::SIGUSR1) };
    let after = USR1_COUNT.load(Ordering::SeqCst);
    if after != before + 1 {
        fails.push(format!(
            "raise(SIGUSR1): handler count went {before} -> {after}"
        ));
    }
    let mut mask = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: query only; sigprocmask fills `mask`.
    let r = unsafe { libc::sigprocmask(libc::SIG_BLOCK, ptr::null(), mask.as_mut_ptr()) };
    // SAFETY: `mask` was filled when r == 0.
    if r != 0 || unsafe { libc::sigismember(mask.as_ptr(), libc::SIGWINCH) } != 1 {
        fails.push("SIGWINCH is not blocked".into());
    }

    // Alternate signal stack.
    let mut ss = MaybeUninit::<libc::stack_t>::uninit();
    // SAFETY: query only; sigaltstack fills `ss`.
    if unsafe { libc::sigaltstack(ptr::null(), ss.as_mut_ptr()) } != 0 {
        fails.push(format!("sigaltstack: {}", io::Error::last_os_error()));
    } else {
        // SAFETY: filled by the successful call above.
        let ss = unsafe { ss.assume_init() };
        if ss.ss_sp != st.altstack.ss_sp || ss.ss_size != st.altstack.ss_size || ss.ss_flags != 0 {
            fails.push(format!(
                "sigaltstack: sp {:?} size {} flags {} (want {:?} {} 0)",
                ss.ss_sp, ss.ss_size, ss.ss_flags, st.altstack.ss_sp, st.altstack.ss_size
            ));
        }
    }

    // Timers.
    let mut it = MaybeUninit::<libc::itimerval>::uninit();
    // SAFETY: getitimer fills `it`.
    if unsafe { libc::getitimer(libc::ITIMER_REAL, it.as_mut_ptr()) } != 0 {
        fails.push(format!("getitimer: {}", io::Error::last_os_error()));
    } else {
        // SAFETY: filled by the successful call above.
        let it = unsafe { it.assume_init() };
        let value = it.it_value.tv_sec * 1_000_000 + it.it_value.tv_usec;
        let interval = it.it_interval.tv_sec * 1_000_000 + it.it_interval.tv_usec;
        if value == 0 || interval != ITIMER_INTERVAL_US {
            fails.push(format!("ITIMER_REAL: value {value} us, interval {interval} us (want armed, {ITIMER_INTERVAL_US})"));
        }
    }
    let mut ts = MaybeUninit::<libc::itimerspec>::uninit();
    // SAFETY: `timer` is ours; timer_gettime fills `ts`.
    if unsafe { libc::timer_gettime(st.timer, ts.as_mut_ptr()) } != 0 {
        fails.push(format!("timer_gettime: {}", io::Error::last_os_error()));
    } else {
        // SAFETY: filled by the successful call above.
        let ts = unsafe { ts.assume_init() };
        let value = ts.it_value.tv_sec * 1_000_000_000 + ts.it_value.tv_nsec;
        let interval = ts.it_interval.tv_sec * 1_000_000_000 + ts.it_interval.tv_nsec;
        if value == 0 || interval != POSIX_TIMER_INTERVAL_NS {
            fails.push(format!(
                "POSIX timer: value {value} ns, interval {interval} ns (want armed, {POSIX_TIMER_INTERVAL_NS})"
            ));
        }
    }
    let (alarm0, posix0) = (
        ALARM_TICKS.load(Ordering::SeqCst),
        POSIX_TICKS.load(Ordering::SeqCst),
    );
    sleep_through_signals(Duration::from_millis(300));
    let (alarm1, posix1) = (
        ALARM_TICKS.load(Ordering::SeqCst),
        POSIX_TICKS.load(Ordering::SeqCst),
    );
    if alarm1 < alarm0 + 2 {
        fails.push(format!(
            "SIGALRM ticks over 300 ms: {alarm0} -> {alarm1} (itimer not firing)"
        ));
    }
    if posix1 < posix0 + 1 {
        fails.push(format!(
            "POSIX timer ticks over 300 ms: {posix0} -> {posix1} (timer not firing)"
        ));
    }

    // The counter: the in-memory value matches the last one written.
    let mut buf = [0u8; 32];
    let n = st.progress.read_at(&mut buf, 0).unwrap_or(0);
    let on_disk = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if counter == 0 || on_disk != Some(counter) {
        fails.push(format!(
            "counter {counter} but progress file holds {on_disk:?}"
        ));
    }
    fails
}

fn write_atomically(path: &Path, content: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

fn run(dir: &Path) -> io::Result<()> {
    let st = setup(dir)?;
    write_atomically(&dir.join("ready"), &format!("{}\n", std::process::id()))?;
    let mut counter: u64 = 0;
    loop {
        counter += 1;
        let text = counter.to_string();
        // The counter only grows, so writing first never leaves a torn value.
        st.progress.write_at(text.as_bytes(), 0)?;
        st.progress.set_len(text.len() as u64)?;
        if CHECK_REQUESTED.swap(false, Ordering::SeqCst) {
            let fails = verify(&st, counter);
            let report = if fails.is_empty() {
                format!("OK counter={counter}\n")
            } else {
                format!("FAIL: {}\n", fails.join("; "))
            };
            write_atomically(&dir.join("report"), &report)?;
        }
        nap();
    }
}

/// `criu-workload --vfork`: a tree with a task inside vfork(2). The process
/// forks a child, which starts a grandchild with
/// `clone(CLONE_VM | CLONE_VFORK)` that never execs or exits, so the child
/// waits in vfork for as long as the tree lives. The root and the
/// grandchild sleep.
fn vfork_tree() -> ! {
    const STACK_LEN: usize = 64 * 1024;
    extern "C" fn grandchild(_: *mut libc::c_void) -> libc::c_int {
        // Only a raw system call here: this task shares its parent's memory.
        loop {
            // SAFETY: pause has no arguments.
            unsafe { libc::pause() };
        }
    }
    // SAFETY: fork in a single-threaded program.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("fork: {}", io::Error::last_os_error());
            std::process::exit(1)
        }
        0 => {
            let mut stack = vec![0u8; STACK_LEN];
            // SAFETY: the grandchild runs `grandchild` on `stack` (its top,
            // 16-byte aligned), which outlives it: this task waits in vfork
            // until the grandchild is gone.
            let r = unsafe {
                let top = stack.as_mut_ptr().add(STACK_LEN) as usize & !15;
                libc::clone(
                    grandchild,
                    top as *mut libc::c_void,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                    ptr::null_mut(),
                )
            };
            eprintln!("clone returned {r}");
            std::process::exit(1)
        }
        _ => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
    }
}

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "--vfork") {
        vfork_tree();
    }
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: criu-workload DIR");
        std::process::exit(2);
    };
    if let Err(e) = run(Path::new(&dir)) {
        eprintln!("criu-workload: {e}");
        let _ = fs::write(
            Path::new(&dir).join("report"),
            format!("FAIL: workload error: {e}\n"),
        );
        std::process::exit(1);
    }
}
