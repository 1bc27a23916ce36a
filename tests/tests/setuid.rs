//! setuid mode end to end: `criu` run by an unprivileged user (uid/gid
//! 65534, no supplementary groups) with `criu-helper` installed setuid root.
//!
//! Each test installs a copy of the binaries the way `scripts/install.sh`
//! does — `T/bin/criu` and `T/libexec/criu/criu-helper` (root:root, 4755) —
//! and runs criu through `setpriv` with `CRIU_HELPER` removed from the
//! environment, so the helper is found by the `../libexec/criu` lookup. The
//! user dumps and restores their own process; every request about a task or
//! a file the user could not touch themselves is refused with a clear error
//! and leaves the target running, untraced.
//!
//! The test binary must run as root (to install the setuid copy and to start
//! the other users' targets); otherwise each test prints why it is skipped.

use criu_frontend::images::types::{CoreEntry, FileEntry, FileKind};
use criu_frontend::images::{read_image, read_single, write_image, ImageDir, Kind};
use criu_tests::*;
use shared_ipc::{
    seqpacket_pair, Channel, DenyReason, IdField, Request, Response, HELLO_MAGIC, PROTOCOL_VERSION,
};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged user criu runs as.
const USER: u32 = 65534;
/// Another unprivileged user.
const OTHER: u32 = 65533;
/// `setpriv` arguments that run the rest of the command line as [`USER`].
const AS_USER: [&str; 4] = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"];

/// The binaries installed as a packager would, inside the test's directory.
struct Install {
    /// `T/bin/criu`.
    criu: PathBuf,
    /// `T/bin/criu-workload` (a target the user can run).
    workload: PathBuf,
    /// `T/libexec/criu/criu-helper`, root:root 4755.
    helper: PathBuf,
    /// Held for the whole test: these tests run one at a time. A setuid
    /// restore of a tree sets the system's next PID (`SetNextPid`) just
    /// before each fork, so a process another test starts in that instant
    /// takes the PID the restore needs (and a failed test's cleanup would
    /// then kill that other test's process).
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

/// A test as root with the setuid install, the images and work directories
/// owned by [`USER`]; `None` (with the reason printed) when it cannot run.
fn setup(name: &str) -> Option<(Test, Install)> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Test::new(name)?;
    for tool in ["setpriv", "/usr/bin/python3"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("{name}: skipped: {tool} is not installed");
            return None;
        }
    }
    let root = t.root().to_path_buf();
    chmod(&root, 0o755);
    let tree = root.join("install");
    for d in ["bin", "libexec", "libexec/criu"] {
        let p = tree.join(d);
        fs::create_dir_all(&p).expect("mkdir install tree");
        chmod(&p, 0o755);
    }
    chmod(&tree, 0o755);
    let b = bins();
    let inst = Install {
        criu: tree.join("bin/criu"),
        workload: tree.join("bin/criu-workload"),
        helper: tree.join("libexec/criu/criu-helper"),
        _serial: serial,
    };
    for (from, to) in [
        (&b.criu, &inst.criu),
        (&b.workload, &inst.workload),
        (&b.helper, &inst.helper),
    ] {
        copy_executable(from, to);
        chmod(to, 0o755);
    }
    std::os::unix::fs::chown(&inst.helper, Some(0), Some(0)).expect("chown helper");
    chmod(&inst.helper, 0o4755);
    for d in [t.images(), t.work()] {
        std::os::unix::fs::chown(&d, Some(USER), Some(USER)).expect("chown to the user");
    }
    Some((t, inst))
}

/// Marks inherited descriptors above 2 close-on-exec in the child.
fn no_inherited_fds(cmd: &mut Command) {
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

/// `setpriv --reuid=65534 ... -- prog`.
fn as_user(prog: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(AS_USER).arg(prog);
    cmd
}

/// Runs the installed criu as [`USER`] with `CRIU_HELPER` unset, to
/// completion (killed after [`CRIU_TIMEOUT`]), and records the run.
fn criu_as_user(t: &Test, inst: &Install, args: &[&str]) -> CriuRun {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = t.root().join(format!("user-criu-{n}.stdout"));
    let err = t.root().join(format!("user-criu-{n}.stderr"));
    let mut cmd = as_user(&inst.criu);
    cmd.args(args)
        .env_remove("CRIU_HELPER")
        .current_dir(t.root())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("stdout file"))
        .stderr(fs::File::create(&err).expect("stderr file"));
    no_inherited_fds(&mut cmd);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start setpriv criu");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait criu") {
            break Some(st);
        }
        if started.elapsed() > CRIU_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let value = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let images_dir = value("-D");
    let log_file = value("-o").map(|l| match &images_dir {
        Some(d) => d.join(l),
        None => l,
    });
    let mut shown = vec!["(as uid 65534)".to_owned()];
    shown.extend(args.iter().map(|s| s.to_string()));
    let run = CriuRun {
        args: shown,
        status,
        elapsed: started.elapsed(),
        stdout: read(&out).unwrap_or_default(),
        stderr: read(&err).unwrap_or_default(),
        log_file,
        images_dir,
    };
    t.record(run.clone());
    run
}

fn must_succeed(t: &Test, run: &CriuRun) {
    if run.code() != 0 {
        t.fail(&format!(
            "criu {} as the user failed (exit {})",
            run.args.join(" "),
            run.code()
        ));
    }
}

fn dump_args(t: &Test, pid: i32) -> Vec<String> {
    [
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        t.images().to_str().expect("utf-8 path"),
        "-o",
        "dump.log",
        "-v4",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn restore_args(t: &Test) -> Vec<String> {
    [
        "restore",
        "-d",
        "-D",
        t.images().to_str().expect("utf-8 path"),
        "-o",
        "restore.log",
        "-v4",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
}

/// Starts `cmd` as a target (own session, stdio on /dev/null, no inherited
/// descriptors) and waits until it sleeps with `Uid:` equal to `uids`.
fn start_target(t: &Test, cmd: &mut Command, uids: &str) -> i32 {
    let pid = t.spawn_target(cmd).id() as i32;
    if !wait_for(Duration::from_secs(10), || {
        status_field(pid, "Uid:").is_some_and(|u| u.split_whitespace().eq(uids.split(' ')))
            && proc_state(pid) == Some('S')
    }) {
        t.fail(&format!(
            "target did not start with uids {uids}: {}",
            describe(pid)
        ));
    }
    pid
}

/// A python3 counter run by the user: writes `TOKEN COUNTER` to
/// `work/state.txt` every 50 ms and keeps `work/data.txt` open at fd 3+.
const COUNTER: &str = r#"
import os, secrets, sys, time
path = sys.argv[1]
data = open(sys.argv[2])
token = secrets.token_hex(16)
counter = 0
while True:
    counter += 1
    with open(path + ".tmp", "w") as f:
        f.write(f"{token} {counter}\n")
    os.replace(path + ".tmp", path)
    time.sleep(0.05)
"#;

fn counter_state(path: &Path) -> Option<(String, u64)> {
    let text = read(path)?;
    let mut it = text.split_whitespace();
    Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
}

/// Starts the python counter as the user and waits until it counts.
fn start_counter(t: &Test) -> (i32, PathBuf) {
    let state = t.work().join("state.txt");
    let data = t.work().join("data.txt");
    fs::write(&data, "some data the program reads\n").expect("write data.txt");
    std::os::unix::fs::chown(&data, Some(USER), Some(USER)).expect("chown data.txt");
    let mut cmd = as_user(Path::new("/usr/bin/python3"));
    cmd.arg("-c").arg(COUNTER).arg(&state).arg(&data);
    let pid = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        counter_state(&state).is_some_and(|(_, c)| c >= 3)
    }) {
        t.fail(&format!(
            "python3 as the user did not start counting: {}",
            describe(pid)
        ));
    }
    (pid, state)
}

/// Dumps the user's python counter as the user (killing it) and reaps it.
fn dump_counter(t: &Test, inst: &Install) -> (i32, PathBuf) {
    let (pid, state) = start_counter(t);
    let run = criu_as_user(t, inst, &strs(&dump_args(t, pid)));
    must_succeed(t, &run);
    reap_dumped(t, pid);
    (pid, state)
}

/// A refused dump: fails naming `needles` and leaves `pid` running.
fn refused_dump(t: &Test, inst: &Install, pid: i32, needles: &[&str]) {
    let run = criu_as_user(t, inst, &strs(&dump_args(t, pid)));
    t.check_err(&run, needles);
    t.assert_running_untouched(pid, "after the refused dump");
}

#[test]
fn user_dumps_and_restores_own_python() {
    let Some((t, inst)) = setup("setuid_python") else {
        return;
    };
    if Path::new("/dev/log").exists() {
        eprintln!("note: /dev/log exists; this run does not prove syslog is optional");
    }
    let (pid, state) = dump_counter(&t, &inst);
    let Some((token, at_dump)) = counter_state(&state) else {
        t.fail("no state file after the dump")
    };
    for f in fs::read_dir(t.images()).expect("read images").flatten() {
        if f.metadata().expect("stat image").uid() != USER {
            t.fail(&format!(
                "{} is not owned by the user: files the user names must be created with the user's rights",
                f.path().display()
            ));
        }
    }
    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    must_succeed(&t, &run);
    t.track(pid);
    let mut seen = None;
    if !wait_for(Duration::from_secs(10), || {
        seen = counter_state(&state);
        seen.as_ref().is_some_and(|(_, c)| *c > at_dump + 2)
    }) {
        t.fail(&format!(
            "restored python3 does not count on (still {token} {at_dump}): {}",
            describe(pid)
        ));
    }
    if seen.as_ref().map(|s| &s.0) != Some(&token) {
        t.fail(&format!(
            "token changed across restore: {token} -> {seen:?}"
        ));
    }
    t.assert_running_untouched(pid, "after the restore");
    for key in ["Uid:", "Gid:"] {
        let want = "65534\t65534\t65534\t65534";
        if status_field(pid, key).as_deref() != Some(want) {
            t.fail(&format!(
                "restored process {key} {:?}, want {want:?}",
                status_field(pid, key)
            ));
        }
    }
    if status_field(pid, "CapEff:").as_deref() != Some("0000000000000000")
        || status_field(pid, "CapPrm:").as_deref() != Some("0000000000000000")
    {
        t.fail(&format!(
            "restored process holds capabilities: {}",
            describe(pid)
        ));
    }
    // The honest state of setuid mode: the exe link is not set (SECURITY.md).
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    if exe != inst.helper {
        t.fail(&format!(
            "/proc/{pid}/exe is {}; setuid mode leaves it at the helper {}",
            exe.display(),
            inst.helper.display()
        ));
    }
    let log = read(&t.images().join("restore.log")).unwrap_or_default();
    if !log.contains("libexec/criu/criu-helper started, caller uid 65534")
        || !log.contains("exe link")
    {
        t.fail("restore.log lacks the libexec helper or the exe-link warning");
    }
    kill_and_reap(pid);
}

#[test]
fn user_dumps_and_restores_own_workload() {
    let Some((t, inst)) = setup("setuid_workload") else {
        return;
    };
    let dir = t.work();
    let mut cmd = as_user(&inst.workload);
    cmd.arg(&dir);
    let pid = t.spawn_target(&mut cmd).id() as i32;
    let w = Workload { pid, dir };
    if !wait_for(Duration::from_secs(10), || {
        read_number(&w.dir.join("ready")) == Some(pid as u64)
            && w.progress().is_some_and(|n| n >= 3)
    }) {
        t.fail(&format!(
            "criu-workload as the user did not become ready: {}",
            describe(pid)
        ));
    }
    t.workload_check(&w, "before the dump");
    let run = criu_as_user(&t, &inst, &strs(&dump_args(&t, pid)));
    must_succeed(&t, &run);
    reap_dumped(&t, pid);
    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    must_succeed(&t, &run);
    t.track(pid);
    t.assert_progressing(&w, "after the restore as the user");
    t.workload_check(&w, "after the restore as the user");
    t.assert_pages_copied_with_userfaultfd(pid, 8 << 20);
    kill_and_reap(pid);
}

#[test]
fn user_cannot_dump_a_root_process() {
    let Some((t, inst)) = setup("setuid_root_target") else {
        return;
    };
    let pid = start_target(&t, Command::new("sleep").arg("100"), "0 0 0 0");
    refused_dump(
        &t,
        &inst,
        pid,
        &[&format!("pid {pid}: real uid 0 differs from yours (65534)")],
    );
}

#[test]
fn user_cannot_dump_another_users_process() {
    let Some((t, inst)) = setup("setuid_other_user") else {
        return;
    };
    let mut cmd = Command::new("sleep");
    cmd.arg("100").uid(OTHER).gid(OTHER);
    let pid = start_target(&t, &mut cmd, "65533 65533 65533 65533");
    refused_dump(
        &t,
        &inst,
        pid,
        &[&format!(
            "pid {pid}: real uid 65533 differs from yours (65534)"
        )],
    );
}

/// Memory a process of the user's only read (the kernel maps the shared
/// zero page there) is not stored in setuid mode either, where the
/// pagemap hides PFNs: 64 MiB read, one page written, gives a pages image
/// of a few pages, and after restore the memory reads the same (zeros and
/// the one byte) without being allocated.
#[test]
fn user_dump_leaves_out_zero_pages() {
    let Some((t, inst)) = setup("setuid_zero_pages") else {
        return;
    };
    let ready = t.work().join("ready");
    let program = format!(
        "import mmap, os, time\n\
         m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n\
         s = sum(m[i] for i in range(0, 64 << 20, 4096))\n\
         m[4096 * 5] = 7\n\
         open({ready:?} + '.tmp', 'w').write(str(s))\n\
         os.rename({ready:?} + '.tmp', {ready:?})\n\
         while True: time.sleep(0.05)\n",
        ready = ready.display().to_string()
    );
    let mut cmd = as_user(Path::new("/usr/bin/python3"));
    cmd.args(["-c", &program]);
    let pid = start_target(&t, &mut cmd, "65534 65534 65534 65534");
    if !wait_for(Duration::from_secs(20), || ready.exists()) {
        t.fail(&format!(
            "target did not read its memory: {}",
            describe(pid)
        ));
    }
    must_succeed(&t, &criu_as_user(&t, &inst, &strs(&dump_args(&t, pid))));
    reap_dumped(&t, pid);
    let pages: u64 = fs::read_dir(t.images())
        .expect("read images")
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("pages-"))
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    if pages > 16 << 20 {
        t.fail(&format!(
            "the pages image holds {pages} bytes: the 64 MiB of zero pages were stored"
        ));
    }
    must_succeed(&t, &criu_as_user(&t, &inst, &strs(&restore_args(&t))));
    t.track(pid);
    let rss_kb: u64 = status_field(pid, "VmRSS:")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(u64::MAX);
    if rss_kb > 48 << 10 {
        t.fail(&format!(
            "restored process has {rss_kb} kB resident: zero pages were allocated"
        ));
    }
    kill_and_reap(pid);
}

/// A task of the user's that made itself non-dumpable (PR_SET_DUMPABLE 0,
/// as ssh-agent and gpg-agent do) is refused by the helper's own check,
/// naming the reason, and runs on.
#[test]
fn user_cannot_dump_own_non_dumpable_process() {
    let Some((t, inst)) = setup("setuid_not_dumpable") else {
        return;
    };
    let mut cmd = as_user(Path::new("/usr/bin/python3"));
    cmd.args([
        "-c",
        "import ctypes, time\n\
         assert ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE\n\
         while True: time.sleep(1)\n",
    ]);
    let pid = start_target(&t, &mut cmd, "65534 65534 65534 65534");
    if !wait_for(Duration::from_secs(10), || {
        fs::metadata(format!("/proc/{pid}/status")).is_ok_and(|m| m.uid() == 0)
    }) {
        t.fail(&format!(
            "target did not become non-dumpable: {}",
            describe(pid)
        ));
    }
    refused_dump(&t, &inst, pid, &[&format!("pid {pid}"), "not dumpable"]);
}

#[test]
fn user_cannot_dump_own_process_holding_a_capability() {
    let Some((t, inst)) = setup("setuid_capability") else {
        return;
    };
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+net_raw",
        "--ambient-caps=+net_raw",
        "sleep",
        "100",
    ]);
    let pid = start_target(&t, &mut cmd, "65534 65534 65534 65534");
    if status_field(pid, "CapAmb:").as_deref() != Some("0000000000002000") {
        t.fail(&format!(
            "target lacks the ambient capability: {}",
            describe(pid)
        ));
    }
    refused_dump(&t, &inst, pid, &[&format!("pid {pid}: holds capabilities")]);
}

#[test]
fn user_cannot_dump_own_process_with_another_saved_uid() {
    let Some((t, inst)) = setup("setuid_saved_uid") else {
        return;
    };
    // setresuid without an exec (execve would set the saved uid to the
    // effective one).
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        "import os, time\nos.setresgid(65534, 65534, 65534)\n\
         os.setgroups([])\nos.setresuid(65534, 65534, 0)\ntime.sleep(100)",
    ]);
    let pid = start_target(&t, &mut cmd, "65534 65534 0 65534");
    refused_dump(
        &t,
        &inst,
        pid,
        &[&format!(
            "pid {pid}: saved uid 0 differs from yours (65534)"
        )],
    );
}

#[test]
fn crafted_image_asking_for_root_is_refused_before_anything_is_created() {
    let Some((t, inst)) = setup("setuid_crafted_creds") else {
        return;
    };
    let (pid, _state) = dump_counter(&t, &inst);
    let core_path = ImageDir::new(t.images()).core(pid);
    let original = fs::read(&core_path).expect("read core image");
    let mut core: CoreEntry = read_single(&core_path, Kind::Core).expect("decode core image");
    core.creds.uids = [0; 4];
    core.creds.cap_eff = !0;
    write_image(&core_path, Kind::Core, &[core]).expect("write crafted core image");
    std::os::unix::fs::chown(&core_path, Some(USER), Some(USER)).expect("chown core image");
    chmod(&core_path, 0o644);

    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    t.check_err(
        &run,
        &[&format!(
            "core-{pid}.img: the image asks for uid 0 (real), you are 65534"
        )],
    );
    t.assert_no_process(pid);
    // Refused before the helper was started: nothing was created.
    let log = read(&t.images().join("restore.log")).unwrap_or_default();
    if log.contains("started, caller uid") || log.contains("stub") {
        t.fail("the refused restore started the helper or created a stub");
    }
    // The untouched image restores.
    fs::write(&core_path, original).expect("put the core image back");
    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    must_succeed(&t, &run);
    t.track(pid);
    t.assert_running_untouched(pid, "after restoring the original image");
    kill_and_reap(pid);
}

#[test]
fn files_are_reopened_with_the_users_rights() {
    let Some((t, inst)) = setup("setuid_reopen_shadow") else {
        return;
    };
    let shadow = Path::new("/etc/shadow");
    let Ok(md) = fs::metadata(shadow) else {
        eprintln!("setuid_reopen_shadow: skipped: no /etc/shadow");
        return;
    };
    let (pid, _state) = dump_counter(&t, &inst);
    let files_path = ImageDir::new(t.images()).file_table();
    let mut files: Vec<FileEntry> =
        read_image(&files_path, Kind::FileTable).expect("decode file table image");
    let mut found = false;
    for f in &mut files {
        if let FileKind::Reg { file, pos, .. } = &mut f.kind {
            if file.path.ends_with("/data.txt") {
                // Everything the precheck compares matches /etc/shadow, so
                // only the open itself, by the user's criu, can refuse.
                file.path = "/etc/shadow".into();
                file.size = md.len();
                file.dev = md.dev();
                file.ino = md.ino();
                file.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
                *pos = 0;
                found = true;
            }
        }
    }
    if !found {
        t.fail("files image has no descriptor on data.txt");
    }
    write_image(&files_path, Kind::FileTable, &files).expect("write crafted file table");
    std::os::unix::fs::chown(&files_path, Some(USER), Some(USER)).expect("chown files image");
    chmod(&files_path, 0o644);

    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    t.check_err(&run, &["/etc/shadow", "EACCES"]);
    t.assert_no_process(pid);
}

#[test]
fn log_file_the_user_cannot_write_is_refused() {
    let Some((t, inst)) = setup("setuid_log_path") else {
        return;
    };
    let (pid, _state) = start_counter(&t);
    for log in ["/etc/criu-setuid-test.log", "/root/criu-setuid-test.log"] {
        let _ = fs::remove_file(log);
        let mut args = dump_args(&t, pid);
        args[6] = log.to_owned();
        let run = criu_as_user(&t, &inst, &strs(&args));
        t.check_err(
            &run,
            &[&format!("cannot open log file {log}"), "Permission denied"],
        );
        if Path::new(log).exists() {
            let _ = fs::remove_file(log);
            t.fail(&format!("{log} was created by a user's criu"));
        }
        t.assert_running_untouched(pid, "after the refused log file");
    }
    // A pidfile the user cannot write: the restore fails after the process
    // is back (the pidfile is written last), and nothing is created in /etc.
    let pidfile = "/etc/criu-setuid-test.pid";
    let run = criu_as_user(&t, &inst, &strs(&dump_args(&t, pid)));
    must_succeed(&t, &run);
    reap_dumped(&t, pid);
    let mut args = restore_args(&t);
    args.extend(["--pidfile".to_owned(), pidfile.to_owned()]);
    let run = criu_as_user(&t, &inst, &strs(&args));
    t.track(pid);
    t.check_err(&run, &[pidfile, "Permission denied"]);
    if Path::new(pidfile).exists() {
        let _ = fs::remove_file(pidfile);
        t.fail(&format!("{pidfile} was created by a user's criu"));
    }
    kill_and_reap(pid);
}

/// The installed helper started directly by the user, its channel at fd 3.
fn start_helper_as_user(inst: &Install) -> (std::process::Child, std::os::fd::OwnedFd) {
    let (ours, theirs) = seqpacket_pair().expect("socketpair");
    let mut cmd = Command::new(&inst.helper);
    cmd.uid(USER)
        .gid(USER)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    criu_frontend::sys::pass_fd_as(&mut cmd, theirs, shared_ipc::HELPER_CHANNEL_FD);
    let child = cmd.spawn().expect("start the setuid helper");
    drop(cmd);
    (child, ours)
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().expect("wait helper") {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the helper did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn hostile_frames_to_the_setuid_helper() {
    let Some((t, inst)) = setup("setuid_hostile_frames") else {
        return;
    };
    // Garbage instead of a Hello: the helper exits non-zero.
    let (mut child, sock) = start_helper_as_user(&inst);
    let garbage = [0xffu8, 0xff, 0xff, 0x7f, 1, 2, 3];
    nix::sys::socket::send(
        sock.as_raw_fd(),
        &garbage,
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("send garbage");
    let st = wait_exit(&mut child);
    if st.success() {
        t.fail(&format!("the helper accepted a garbage frame: {st:?}"));
    }
    drop(sock);

    // A well-formed Seize of a root process: Denied, and the target runs on.
    let pid = start_target(&t, Command::new("sleep").arg("100"), "0 0 0 0");
    let (mut child, sock) = start_helper_as_user(&inst);
    let mut ch: Channel<Request, Response> = Channel::new(sock);
    let mut call = |req: Request| {
        ch.send(&req, &[]).expect("send");
        ch.recv().expect("recv").0
    };
    let hello = call(Request::Hello {
        magic: HELLO_MAGIC,
        version: PROTOCOL_VERSION,
    });
    if hello
        != (Response::Hello {
            version: PROTOCOL_VERSION,
            caller_uid: USER,
        })
    {
        t.fail(&format!("hello answered {hello:?}"));
    }
    let r = call(Request::Seize { pid });
    let want = Response::Denied {
        reason: DenyReason::Uid {
            which: IdField::Real,
            target: 0,
            caller: USER,
        },
    };
    if r != want {
        t.fail(&format!("seize of root's pid {pid} answered {r:?}"));
    }
    t.assert_running_untouched(pid, "after the hand-made seize");
    drop(ch);
    let st = wait_exit(&mut child);
    if !st.success() {
        t.fail(&format!("the helper ended with {st:?} after a clean close"));
    }
}

/// A python3 tree run by the user: the parent forks a child; each starts a
/// second thread and writes `PID COUNTER` to `c<level>` every 50 ms. With `argv[2]` = "other", the
/// program starts as root, the child drops to uid/gid 65533 and the parent
/// to the user (dumpable again, no groups, no capabilities).
const USER_TREE: &str = r#"
import ctypes, os, sys, threading, time
d = sys.argv[1]
other = len(sys.argv) > 2
lvl = 0
if os.fork() == 0:
    lvl = 1
threading.Thread(target=time.sleep, args=(1e9,), daemon=True).start()
uid = 65533 if (other and lvl == 1) else 65534
if other:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
n = 0
while True:
    n += 1
    open(d + f"/c{lvl}.tmp", "w").write(f"{os.getpid()} {n}")
    os.replace(d + f"/c{lvl}.tmp", d + f"/c{lvl}")
    time.sleep(0.05)
"#;

/// Starts [`USER_TREE`] (as the user, or as root with `other`) and returns
/// the pids of parent and child once both count.
fn start_user_tree(t: &Test, other: bool) -> [i32; 2] {
    let w = t.work();
    let mut cmd = if other {
        Command::new("/usr/bin/python3")
    } else {
        as_user(Path::new("/usr/bin/python3"))
    };
    cmd.arg("-c").arg(USER_TREE).arg(&w);
    if other {
        cmd.arg("other");
    }
    let root = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        (0..2).all(|l| level_counter(&w, l).is_some_and(|c| c.1 >= 3))
    }) {
        t.fail(&format!(
            "the user's tree did not start: {}",
            describe(root)
        ));
    }
    let pids = [root, level_counter(&w, 1).unwrap().0];
    t.track(pids[1]);
    pids
}

fn tree_counts_on(t: &Test, when: &str) {
    let w = t.work();
    let start: Vec<u64> = (0..2)
        .map(|l| level_counter(&w, l).map_or(0, |c| c.1))
        .collect();
    if !wait_for(Duration::from_secs(5), || {
        (0..2).all(|l| level_counter(&w, l).is_some_and(|c| c.1 > start[l as usize] + 2))
    }) {
        t.fail(&format!("{when}: not every process of the tree counts on"));
    }
}

#[test]
fn user_dumps_and_restores_own_tree() {
    let Some((t, inst)) = setup("setuid_tree") else {
        return;
    };
    let pids = start_user_tree(&t, false);
    let run = criu_as_user(&t, &inst, &strs(&dump_args(&t, pids[0])));
    must_succeed(&t, &run);
    reap_dumped(&t, pids[0]);
    // The killed child was reparented to us (the test is a subreaper).
    if let Err(e) = reap(pids[1], Duration::from_secs(10)) {
        t.fail(&format!("dumped child {} was not killed: {e}", pids[1]));
    }
    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    must_succeed(&t, &run);
    for p in pids {
        t.track(p);
        t.assert_running_untouched(p, "after the restore as the user");
        if status_field(p, "Threads:").as_deref() != Some("2") {
            t.fail(&format!("restored {p} lost its thread: {}", describe(p)));
        }
        if status_field(p, "Uid:").as_deref() != Some("65534\t65534\t65534\t65534") {
            t.fail(&format!("restored {p} has another uid: {}", describe(p)));
        }
    }
    if ppid(pids[1]) != Some(pids[0]) {
        t.fail(&format!(
            "restored child's parent changed: {}",
            describe(pids[1])
        ));
    }
    tree_counts_on(&t, "after the restore as the user");
    for p in pids {
        kill_and_reap(p);
    }
}

#[test]
fn user_cannot_dump_a_tree_with_another_users_child() {
    let Some((t, inst)) = setup("setuid_tree_other") else {
        return;
    };
    // The child runs as another user and writes there too.
    chmod(&t.work(), 0o777);
    let pids = start_user_tree(&t, true);
    for (p, uids) in pids.iter().zip(["65534", "65533"]) {
        if !wait_for(Duration::from_secs(5), || {
            status_field(*p, "Uid:").is_some_and(|u| u.split_whitespace().all(|x| x == uids))
        }) {
            t.fail(&format!("{p} did not become uid {uids}: {}", describe(*p)));
        }
    }
    refused_dump(
        &t,
        &inst,
        pids[0],
        &[&format!(
            "pid {}: real uid 65533 differs from yours (65534)",
            pids[1]
        )],
    );
    t.assert_running_untouched(pids[1], "after the refused dump");
    tree_counts_on(&t, "after the refused dump");
    if fs::read_dir(t.images())
        .expect("read images")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("inventory"))
        })
    {
        t.fail("a refused dump wrote an inventory");
    }
    for p in pids {
        kill_and_reap(p);
    }
}

/// Memory shared across fork stays shared when the user dumps and restores
/// their own tree through the setuid helper (the objects are re-created by
/// plain mmap and mremap in the stubs, which need no privilege).
#[test]
fn user_tree_keeps_its_shared_memory() {
    let Some((t, inst)) = setup("setuid_shared_memory") else {
        return;
    };
    let w = t.work();
    let data = w.join("shared.dat");
    fs::write(&data, vec![0u8; 4096]).expect("shared.dat");
    std::os::unix::fs::chown(&data, Some(USER), Some(USER)).expect("chown shared.dat");
    let mut cmd = as_user(Path::new("/usr/bin/python3"));
    cmd.arg("-c").arg(SHARED_MEMORY_PROGRAM).arg(&w);
    let root = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        sharing_report(&w, "parent").is_some_and(|r| r.n > 3 && r.pid == root)
            && sharing_report(&w, "child").is_some_and(|r| r.n > 3)
    }) {
        t.fail(&format!("the tree did not start: {}", describe(root)));
    }
    let child = sharing_report(&w, "child").unwrap().pid;
    t.track(child);
    let run = criu_as_user(&t, &inst, &strs(&dump_args(&t, root)));
    must_succeed(&t, &run);
    reap_dumped(&t, root);
    if let Err(e) = reap(child, Duration::from_secs(10)) {
        t.fail(&format!("dumped child {child} was not killed: {e}"));
    }
    let at_dump = (
        sharing_report(&w, "parent").unwrap().n,
        sharing_report(&w, "child").unwrap().n,
    );
    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    must_succeed(&t, &run);
    t.track(root);
    t.track(child);
    assert_sharing(&t, &w, at_dump, "after the user's restore");
    kill_and_reap(root);
    kill_and_reap(child);
}

/// The user's python3 with UNIX sockets: a socketpair with data queued,
/// a listener on a path in the user's directory with an accepted
/// connection, and a file in flight. On `go` it checks them and writes
/// `result`.
const UNIX_SOCKETS: &str = r#"
import os, socket, sys, time
w = sys.argv[1]
a, b = socket.socketpair()
a.send(b"queued")
L = socket.socket(socket.AF_UNIX); L.bind(w + "/l.sock"); L.listen(1)
c = socket.socket(socket.AF_UNIX); c.connect(w + "/l.sock"); s, _ = L.accept()
c.send(b"req")
f = os.open(w + "/inflight", os.O_RDWR | os.O_CREAT, 0o644)
socket.send_fds(a, [b"fd"], [f]); os.close(f)
def put(name, text):
    open(w + "/" + name + ".tmp", "w").write(text)
    os.replace(w + "/" + name + ".tmp", w + "/" + name)
put("ready", "")
while not os.path.exists(w + "/go"):
    time.sleep(0.02)
bad = []
if b.recv(6) != b"queued": bad.append("pair")
m, fds, _, _ = socket.recv_fds(b, 10, 1)
if m != b"fd" or len(fds) != 1: bad.append("fd in flight")
if s.recv(3) != b"req" or s.getsockname() != w + "/l.sock": bad.append("accepted")
put("result", "ok" if not bad else " ".join(bad))
while True:
    time.sleep(1)
"#;

#[test]
fn user_dumps_and_restores_own_unix_sockets() {
    let Some((t, inst)) = setup("setuid_unix") else {
        return;
    };
    let w = t.work();
    let mut cmd = as_user(Path::new("/usr/bin/python3"));
    cmd.arg("-c").arg(UNIX_SOCKETS).arg(&w);
    let pid = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || w.join("ready").exists()) {
        t.fail(&format!(
            "the user's python3 did not start: {}",
            describe(pid)
        ));
    }
    let run = criu_as_user(&t, &inst, &strs(&dump_args(&t, pid)));
    must_succeed(&t, &run);
    reap_dumped(&t, pid);
    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    must_succeed(&t, &run);
    t.track(pid);
    let sock = w.join("l.sock");
    if fs::metadata(&sock).map(|m| m.uid()).ok() != Some(USER) {
        t.fail(&format!(
            "{} is not the user's after restore",
            sock.display()
        ));
    }
    fs::write(w.join("go"), "").expect("write go");
    if !wait_for(Duration::from_secs(10), || w.join("result").exists()) {
        t.fail(&format!(
            "no result from the restored python3: {}",
            describe(pid)
        ));
    }
    let res = read(&w.join("result")).unwrap_or_default();
    if res != "ok" {
        t.fail(&format!("after restore as the user: {res}"));
    }
    kill_and_reap(pid);
}

/// The user dumps and restores their own pseudo-terminal program
/// (tests/programs/pty_pair.py, see tests/tests/terminals.rs): criu, as the
/// user, makes the pair again, refills its queues and gives the child
/// (a session leader) its controlling terminal back; the child then reads
/// the line queued before the dump and the partial line completed after.
#[test]
fn user_dumps_and_restores_own_pty_pair() {
    let Some((t, inst)) = setup("setuid_pty") else {
        return;
    };
    let s = t.work().join("s").display().to_string();
    let mut cmd = as_user(Path::new("/usr/bin/python3"));
    cmd.arg("-c")
        .arg(include_str!("../programs/pty_pair.py"))
        .arg(&s);
    let parent = t.spawn_target(&mut cmd).id() as i32;
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
    let child = pids.unwrap().1;
    t.track(child);
    must_succeed(&t, &criu_as_user(&t, &inst, &strs(&dump_args(&t, parent))));
    reap_dumped(&t, parent);
    let _ = reap(child, Duration::from_secs(10));
    must_succeed(&t, &criu_as_user(&t, &inst, &strs(&restore_args(&t))));
    t.track(parent);
    t.track(child);
    fs::write(format!("{s}.go"), b"").expect("write go");
    let lines = || read(Path::new(&format!("{s}.lines"))).unwrap_or_default();
    if !wait_for(Duration::from_secs(10), || lines().lines().count() >= 3) {
        t.fail(&format!(
            "the restored child does not read through its pty: {:?} {}",
            lines(),
            describe(child)
        ));
    }
    let l = lines();
    let l: Vec<&str> = l.lines().collect();
    if l[0] != "queued line" || l[1] != "partial end" {
        t.fail(&format!("queued input not read back as typed: {l:?}"));
    }
    let rdev = fs::metadata(format!("/proc/{child}/fd/0"))
        .map(|m| m.rdev())
        .unwrap_or(0);
    let stat = read(Path::new(&format!("/proc/{child}/stat"))).unwrap_or_default();
    let tty_nr: u64 = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(4)?.parse().ok())
        .unwrap_or(1);
    if rdev != tty_nr || status_field(child, "Uid:").is_none_or(|u| !u.starts_with("65534")) {
        t.fail(&format!(
            "child's controlling terminal {tty_nr:#x} is not its fd 0 {rdev:#x}, or it is not the user's: {}",
            describe(child)
        ));
    }
    kill_and_reap(child);
    kill_and_reap(parent);
}

/// The pipes, FIFO, eventfd, signalfd, timerfd, epoll, memfd and inotify
/// program of fd_kinds.rs, run, dumped and restored by the user (criu
/// cannot use open_by_handle_at(2) then: the inotify watches are named
/// from the files the process has open and their directories).
const FD_KINDS: &str = include_str!("../programs/fd_one_of_each.py");

#[test]
fn user_dumps_and_restores_own_pipes_and_event_descriptors() {
    let Some((t, inst)) = setup("setuid_fd_kinds") else {
        return;
    };
    let w = t.work();
    let mut cmd = as_user(Path::new("/usr/bin/python3"));
    cmd.arg("-c").arg(FD_KINDS).arg(&w);
    let pid = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || w.join("ready").exists()) {
        t.fail(&format!(
            "the user's python3 did not start: {}",
            describe(pid)
        ));
    }
    let run = criu_as_user(&t, &inst, &strs(&dump_args(&t, pid)));
    must_succeed(&t, &run);
    reap_dumped(&t, pid);
    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    must_succeed(&t, &run);
    t.track(pid);
    fs::write(w.join("go"), "").expect("write go");
    if !wait_for(Duration::from_secs(20), || w.join("result").exists()) {
        t.fail(&format!(
            "no result from the restored python3: {}",
            describe(pid)
        ));
    }
    let text = read(&w.join("result")).unwrap_or_default();
    let ok = text.lines().filter(|l| l.contains(" ok ")).count();
    if ok < 24 || text.lines().any(|l| !l.contains(" ok ")) {
        t.fail(&format!(
            "checks after restore as the user ({ok} passed):\n{text}"
        ));
    }
    kill_and_reap(pid);
}

/// The memfd/deleted-file mapping target (see mapped_files.rs).
const MAPPED_FILES: &str = include_str!("mapped_files.py");

/// Starts `mapped_files.py` as the user in `mode`; waits until it is ready.
fn start_mapped_files(t: &Test, mode: &str) -> i32 {
    let w = t.work();
    let mut cmd = as_user(Path::new("/usr/bin/python3"));
    cmd.arg("-c").arg(MAPPED_FILES).arg(&w).arg(mode);
    let pid = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || w.join("ready").exists()) {
        t.fail(&format!(
            "the user's python3 did not start: {}",
            describe(pid)
        ));
    }
    pid
}

/// A memfd mapped shared with its descriptor open: the user's criu (no
/// `/proc/PID/map_files`) reads it through the descriptor, and after
/// restore the mapping and the descriptor are one file again.
#[test]
fn user_dumps_and_restores_own_memfd_mapping() {
    let Some((t, inst)) = setup("setuid_memfd_mapping") else {
        return;
    };
    let w = t.work();
    let pid = start_mapped_files(&t, "user");
    let run = criu_as_user(&t, &inst, &strs(&dump_args(&t, pid)));
    must_succeed(&t, &run);
    reap_dumped(&t, pid);
    let run = criu_as_user(&t, &inst, &strs(&restore_args(&t)));
    must_succeed(&t, &run);
    t.track(pid);
    let line = maps(pid)
        .into_iter()
        .find(|l| l.ends_with("/memfd:criu-shared (deleted)"))
        .unwrap_or_else(|| t.fail("no /memfd:criu-shared mapping after restore"));
    let range = line.split(' ').next().unwrap_or_default().to_owned();
    let mapped = fs::metadata(format!("/proc/{pid}/map_files/{range}")).map(|m| m.ino());
    let by_fd = fd_links(pid)
        .into_iter()
        .find(|(_, l)| l == "/memfd:criu-shared (deleted)")
        .and_then(|(fd, _)| fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok())
        .map(|m| m.ino());
    if mapped.as_ref().ok() != by_fd.as_ref() {
        t.fail(&format!(
            "the mapping (inode {mapped:?}) and the descriptor (inode {by_fd:?}) are two files"
        ));
    }
    fs::write(w.join("go"), "").expect("write go");
    if !wait_for(Duration::from_secs(20), || w.join("result").exists()) {
        t.fail("no result from the restored python3");
    }
    let text = read(&w.join("result")).unwrap_or_default();
    if text.lines().filter(|l| l.contains(" ok ")).count() < 4
        || text.lines().any(|l| !l.contains(" ok "))
    {
        t.fail(&format!("checks after restore as the user:\n{text}"));
    }
    kill_and_reap(pid);
}

/// A memfd only mapped (its descriptor closed): the user's criu cannot
/// read it, and says so naming the mapping; the process runs on.
#[test]
fn user_memfd_mapping_without_descriptor_is_refused() {
    let Some((t, inst)) = setup("setuid_memfd_closed") else {
        return;
    };
    let pid = start_mapped_files(&t, "closed");
    refused_dump(
        &t,
        &inst,
        pid,
        &[
            &format!("pid {pid}: mapping 0x"),
            "/memfd:criu-closed (deleted)",
            "CAP_CHECKPOINT_RESTORE",
            "no descriptor",
        ],
    );
    if t.images().join("inventory.img").exists() {
        t.fail("the refused dump left an inventory.img");
    }
    kill_and_reap(pid);
}
