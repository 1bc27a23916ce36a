//! `criu-helper` installed setuid root and run by an unprivileged user
//! (uid/gid 65534): the setuid-mode rules of SECURITY.md on real processes.
//! The test binary must run as root (to install the copy and to start
//! targets of other users); otherwise each test is skipped with a message.

mod common;
use common::*;
use shared_ipc::{
    CapSet, DenyReason, ErrorKind, IdField, ReleaseMode, Request, Response, HELLO_MAGIC,
    PROTOCOL_VERSION,
};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

/// CAP_NET_RAW is 13, CAP_SYS_PTRACE 19 (linux/capability.h).
/// The unprivileged user the helper is run by.
const USER: u32 = 65534;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (installs a setuid-root copy of criu-helper)");
    false
}

/// A copy of the helper owned by root with mode 4755, in a directory
/// everyone may enter.
fn installed_helper() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("criu-helper-setuid")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("criu-helper");
        std::fs::copy(env!("CARGO_BIN_EXE_criu-helper"), &path).unwrap();
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755)).unwrap();
        path
    })
}

impl Helper {
    /// Start the installed helper as uid/gid 65534 with no supplementary
    /// groups, the channel at descriptor 3, and say hello.
    fn start() -> Helper {
        Helper::start_as(USER, None)
    }

    /// [`Helper::start`] as `uid`, optionally with `RLIMIT_NPROC` set to
    /// `nproc` (soft and hard) before the helper runs.
    fn start_as(uid: u32, nproc: Option<u64>) -> Helper {
        let mut cmd = Command::new(installed_helper());
        // std calls setgroups(0) before setuid when root drops to a uid.
        cmd.uid(uid).gid(uid);
        if let Some(n) = nproc {
            // SAFETY: the closure only calls the async-signal-safe
            // setrlimit between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NPROC, &lim) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut h = Helper::spawn(cmd);
        let r = h.call(Request::Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
        });
        assert_eq!(
            r,
            Response::Hello {
                version: PROTOCOL_VERSION,
                caller_uid: uid
            }
        );
        h
    }

    fn finish(mut self) {
        drop(self.chan);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "helper ended with {status:?}");
    }
}

/// A process that is killed when dropped.
struct Target(Child);

impl Target {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Start `cmd` and wait until it sleeps with the status line `Uid:`
    /// equal to `uid_line` (so its credential changes are done).
    fn start(mut cmd: Command, uid_line: &str) -> Target {
        let t = Target(cmd.spawn().unwrap());
        let pid = t.pid();
        assert!(
            wait_for(|| proc_state(pid) == Some('S')
                && status_field(pid, "Uid:").as_deref() == Some(uid_line)),
            "target {pid} not ready: {:?}",
            status_field(pid, "Uid:")
        );
        t
    }

    /// Still running, not stopped, not traced.
    fn assert_untouched(&self) {
        let pid = self.pid();
        let st = proc_state(pid).unwrap();
        assert!(st == 'S' || st == 'R', "target {pid} in state {st}");
        assert_eq!(status_field(pid, "TracerPid:").as_deref(), Some("0"));
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleep_as(uid: Option<u32>) -> Target {
    let mut cmd = Command::new("sleep");
    cmd.arg("100");
    if let Some(u) = uid {
        cmd.uid(u).gid(u);
    }
    let u = uid.unwrap_or(0);
    Target::start(cmd, &format!("{u}\t{u}\t{u}\t{u}"))
}

fn assert_refused(target: &Target, want: DenyReason, words: &str) {
    let mut h = Helper::start();
    let pid = target.pid();
    let r = h.call(Request::Seize { pid });
    assert_eq!(r, Response::Denied { reason: want }, "pid {pid}");
    assert_eq!(want.to_string(), words);
    target.assert_untouched();
    // Nothing was seized: any other request on it is NotTraced.
    assert_eq!(
        h.call(Request::GetRegs { pid }),
        Response::Error {
            kind: ErrorKind::NotTraced,
            errno: 0
        }
    );
    h.finish();
    target.assert_untouched();
}

#[test]
fn refuses_a_root_task() {
    if !is_root() {
        return;
    }
    let t = sleep_as(None);
    let want = DenyReason::Uid {
        which: IdField::Real,
        target: 0,
        caller: USER,
    };
    assert_refused(&t, want, "real uid 0 differs from yours (65534)");
}

#[test]
fn refuses_another_users_task() {
    if !is_root() {
        return;
    }
    let t = sleep_as(Some(65533));
    let want = DenyReason::Uid {
        which: IdField::Real,
        target: 65533,
        caller: USER,
    };
    assert_refused(&t, want, "real uid 65533 differs from yours (65534)");
}

#[test]
fn refuses_a_task_of_the_user_holding_a_capability() {
    if !is_root() {
        return;
    }
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
    let t = Target::start(cmd, "65534\t65534\t65534\t65534");
    assert_eq!(
        status_field(t.pid(), "CapAmb:").as_deref(),
        Some("0000000000002000")
    );
    let want = DenyReason::Caps {
        set: CapSet::Inheritable,
        mask: 1 << 13,
    };
    assert_refused(&t, want, "holds capabilities (inheritable set 0x2000)");
}

#[test]
fn refuses_a_task_of_the_user_with_saved_uid_root() {
    if !is_root() {
        return;
    }
    // setresuid(65534, 65534, 0) without an exec (execve would set the
    // saved uid to the effective one).
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        "import os, time\nos.setresgid(65534, 65534, 65534)\n\
         os.setgroups([])\nos.setresuid(65534, 65534, 0)\ntime.sleep(100)",
    ]);
    let t = Target::start(cmd, "65534\t65534\t0\t65534");
    let want = DenyReason::Uid {
        which: IdField::Saved,
        target: 0,
        caller: USER,
    };
    assert_refused(&t, want, "saved uid 0 differs from yours (65534)");
}

/// A `syscall` instruction in the target's vdso.
#[test]
fn seizes_the_users_own_task_and_runs_locked_down() {
    if !is_root() {
        return;
    }
    let t = sleep_as(Some(USER));
    let pid = t.pid();
    let mut h = Helper::start();
    // The serving helper: setuid root, but only CAP_SYS_PTRACE, no new
    // privileges, seccomp filter on.
    let hp = h.child.id() as i32;
    assert_eq!(
        status_field(hp, "Uid:").as_deref(),
        Some("65534\t0\t0\t65534")
    );
    let ptrace_only = format!("{:016x}", 1u64 << 19);
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(status_field(hp, key), Some(ptrace_only.clone()), "{key}");
    }
    assert_eq!(
        status_field(hp, "CapInh:").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(status_field(hp, "NoNewPrivs:").as_deref(), Some("1"));
    assert_eq!(status_field(hp, "Seccomp:").as_deref(), Some("2"));

    assert_eq!(h.call(Request::Seize { pid }), Response::Ok);
    assert_eq!(proc_state(pid), Some('t'));
    let gadget = vdso_gadget(&mut h, pid).0;
    assert_eq!(
        h.call(Request::SetGadget { pid, addr: gadget }),
        Response::Ok
    );
    assert_eq!(
        h.syscall(pid, libc::SYS_getpid as u64, [0; 6]),
        i64::from(pid)
    );
    assert_eq!(
        h.call(Request::Release {
            pid,
            how: ReleaseMode::Resume
        }),
        Response::Ok
    );
    assert!(wait_for(|| proc_state(pid) == Some('S')));
    t.assert_untouched();
    h.finish();
    t.assert_untouched();
}

#[test]
fn a_task_that_execs_while_traced_is_let_go() {
    if !is_root() {
        return;
    }
    let mut t = sleep_as(Some(USER));
    let pid = t.pid();
    let mut h = Helper::start();
    assert_eq!(h.call(Request::Seize { pid }), Response::Ok);
    let gadget = vdso_gadget(&mut h, pid).0;
    assert_eq!(
        h.call(Request::SetGadget { pid, addr: gadget }),
        Response::Ok
    );
    // A page with "/bin/true\0" and argv = { path, NULL }.
    let page = h.syscall(pid, libc::SYS_mmap as u64, [0, 4096, 3, 0x22, u64::MAX, 0]);
    assert!(page > 0, "mmap: {page}");
    let page = page as u64;
    let mut data = b"/bin/true\0\0\0\0\0\0\0".to_vec();
    data.extend_from_slice(&page.to_le_bytes());
    data.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(
        h.call(Request::WriteMemory {
            pid,
            addr: page,
            data
        }),
        Response::Ok
    );
    let r = h.call(Request::Syscall {
        pid,
        nr: libc::SYS_execve as u64,
        args: [page, page + 16, 0, 0, 0, 0],
    });
    assert_eq!(
        r,
        Response::Denied {
            reason: DenyReason::Exec
        }
    );
    assert_eq!(
        h.call(Request::GetRegs { pid }),
        Response::Error {
            kind: ErrorKind::NotTraced,
            errno: 0
        }
    );
    // The new program ran untraced to its end.
    let status = t.0.wait().unwrap();
    assert!(status.success(), "/bin/true ended with {status:?}");
    h.finish();
}

#[test]
fn a_stub_has_the_callers_credentials_and_no_capability() {
    if !is_root() {
        return;
    }
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = ((pid_max / 4 * 3 + 1000).max(1300)..pid_max)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let mut h = Helper::start();
    let null = std::fs::File::open("/dev/null").unwrap();
    let r = h.call_fds(Request::CreateStub { pid, fds: vec![0] }, &[null.as_fd()]);
    assert!(matches!(r, Response::Stub { .. }), "{r:?}");
    let ids = format!("{USER}\t{USER}\t{USER}\t{USER}");
    assert_eq!(status_field(pid, "Uid:"), Some(ids.clone()));
    assert_eq!(status_field(pid, "Gid:"), Some(ids));
    assert_eq!(status_field(pid, "Groups:").as_deref(), Some(""));
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(
            status_field(pid, key).as_deref(),
            Some("0000000000000000"),
            "{key}"
        );
    }
    // The frontend's calls run as the caller.
    assert_eq!(
        h.syscall(pid, libc::SYS_getuid as u64, [0; 6]),
        i64::from(USER)
    );
    assert_eq!(
        h.syscall(pid, libc::SYS_setuid as u64, [0; 6]),
        -i64::from(libc::EPERM)
    );
    assert_eq!(
        h.call(Request::Release {
            pid,
            how: ReleaseMode::Kill
        }),
        Response::Ok
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    h.finish();
}

#[test]
fn the_helper_dies_with_its_caller_gone_leaving_targets_running() {
    if !is_root() {
        return;
    }
    // A seized target of the user is let go when the frontend disappears.
    let t = sleep_as(Some(USER));
    let pid = t.pid();
    let mut h = Helper::start();
    assert_eq!(h.call(Request::Seize { pid }), Response::Ok);
    drop(h.chan);
    let status = h.child.wait().unwrap();
    assert!(status.success() && status.signal().is_none(), "{status:?}");
    t.assert_untouched();
}

#[test]
fn security_events_go_to_syslog_under_the_filter() {
    if !is_root() {
        return;
    }
    // Only where there is no syslog daemon: play it at /dev/log for the
    // length of this test. This also proves that logging after the seccomp
    // filter is installed does not kill the helper.
    let dev_log = Path::new("/dev/log");
    if dev_log.exists() {
        eprintln!("skipped: /dev/log exists (a real syslog is running)");
        return;
    }
    let sock = match std::os::unix::net::UnixDatagram::bind(dev_log) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: cannot bind /dev/log: {e}");
            return;
        }
    };
    struct Unlink;
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file("/dev/log");
        }
    }
    let _unlink = Unlink;
    std::fs::set_permissions(dev_log, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Read all the time: the queue holds 10 datagrams and other tests'
    // helpers log here too; a full queue blocks the sender, as it would
    // with syslog(3).
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(_) if stop.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            got
        })
    };

    let root_task = sleep_as(None);
    let own = sleep_as(Some(USER));
    let mut h = Helper::start();
    let hp = h.child.id();
    let r = h.call(Request::Seize {
        pid: root_task.pid(),
    });
    assert!(matches!(r, Response::Denied { .. }), "{r:?}");
    let pid = own.pid();
    assert_eq!(h.call(Request::Seize { pid }), Response::Ok);
    assert_eq!(
        h.call(Request::Release {
            pid,
            how: ReleaseMode::Resume
        }),
        Response::Ok
    );
    h.finish();

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let lines: Vec<String> = reader
        .join()
        .unwrap()
        .into_iter()
        .filter(|l| l.contains(&format!("criu-helper[{hp}]")))
        .collect();
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    // <facility auth (4) * 8 + severity>
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("<38>") || l.starts_with("<36>")),
        "{lines:?}"
    );
    assert!(
        has(&format!(
            "caller_uid={USER} op=seize pid={} refused: real uid 0 differs from yours ({USER})",
            root_task.pid()
        )),
        "{lines:?}"
    );
    assert!(
        has(&format!("caller_uid={USER} op=seize pid={pid} ok")),
        "{lines:?}"
    );
    assert!(
        has(&format!("op=release pid={pid} ok target how=resume")),
        "{lines:?}"
    );
    own.assert_untouched();
    root_task.assert_untouched();
}

/// Stubs count against the caller's `RLIMIT_NPROC` like any fork of theirs:
/// the spawner holds neither `CAP_SYS_ADMIN` nor `CAP_SYS_RESOURCE`, with
/// which the kernel would skip the limit.
#[test]
fn stubs_obey_the_callers_process_limit() {
    if !is_root() {
        return;
    }
    // A uid of its own, so that no other test's processes are counted.
    const UID: u32 = 65532;
    const LIMIT: u64 = 6;
    let mut h = Helper::start_as(UID, Some(LIMIT));
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut free = ((pid_max / 4 * 3 + 3000).max(1500)..pid_max)
        .filter(|p| !Path::new(&format!("/proc/{p}")).exists());
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut made = Vec::new();
    let mut refused = None;
    for _ in 0..2 * LIMIT {
        let pid = free.next().unwrap();
        match h.call_fds(Request::CreateStub { pid, fds: vec![0] }, &[null.as_fd()]) {
            Response::Stub { .. } => made.push(pid),
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    for &pid in &made {
        let _ = h.call(Request::Release {
            pid,
            how: ReleaseMode::Kill,
        });
    }
    h.finish();
    assert!(
        (made.len() as u64) < LIMIT,
        "{} stubs created under RLIMIT_NPROC {LIMIT}",
        made.len()
    );
    assert_eq!(
        refused,
        Some(Response::Error {
            kind: ErrorKind::Clone,
            errno: libc::EAGAIN
        }),
        "the stub beyond the limit should fail with EAGAIN"
    );
}

/// Regression test for a security review finding: while the helper copies
/// pages of the user's own task, an untraced thread of that task execs a
/// setuid-root program, which takes over the task's PID (no PID reuse, so
/// the pidfd does not notice). The copy must not read the new program's
/// memory: the request ends with `Gone` and no byte of the root program's
/// secret reaches the image. Needs a C compiler (`cc`) to build the two
/// small programs; skipped with a message without one.
#[test]
fn pages_of_a_task_that_became_setuid_root_mid_copy_are_not_read() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    if !is_root() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("criu-exec-race")
        .tempdir()
        .unwrap()
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret_file = dir.join("secret.txt");
    std::fs::write(&secret_file, "ROOT-ONLY-SECRET 5f3a\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The setuid program keeps the secret at a fixed address (non-PIE .bss).
    let suid_src = format!(
        r#"#include <fcntl.h>
#include <unistd.h>
static char secret[4096] __attribute__((aligned(4096)));
int main(void) {{
    int fd = open("{}", O_RDONLY);
    if (fd >= 0) {{ read(fd, secret, sizeof secret - 1); close(fd); }}
    write(1, "ready\n", 6);
    sleep(20);
    return 0;
}}"#,
        secret_file.display()
    );
    // The user's program: 1 MiB of 'A' at 0x10000000 and a thread that execs
    // the setuid program when a byte arrives on stdin.
    let victim_src = format!(
        r#"#include <pthread.h>
#include <sys/mman.h>
#include <string.h>
#include <unistd.h>
static void *thr(void *a) {{
    char c;
    if (read(0, &c, 1) == 1) {{
        char *argv[] = {{"suid", 0}};
        execv("{}/suid", argv);
    }}
    return 0;
}}
int main(void) {{
    char *p = mmap((void *)0x10000000, 1 << 20, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    memset(p, 'A', 1 << 20);
    pthread_t t;
    pthread_create(&t, 0, thr, 0);
    for (;;) pause();
}}"#,
        dir.display()
    );
    let build = |name: &str, src: &str, extra: &[&str]| -> bool {
        let c = dir.join(format!("{name}.c"));
        std::fs::write(&c, src).unwrap();
        Command::new("cc")
            .args(extra)
            .arg("-o")
            .arg(dir.join(name))
            .arg(&c)
            .arg("-lpthread")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !build("suid", &suid_src, &["-no-pie", "-fno-pie"]) || !build("victim", &victim_src, &[]) {
        eprintln!("skipped: no C compiler to build the test programs");
        return;
    }
    let suid = dir.join("suid");
    std::os::unix::fs::chown(&suid, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let nm = Command::new("nm").arg(&suid).output().unwrap();
    let secret_addr = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find(|l| l.ends_with(" secret"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .expect("address of `secret` in the setuid program");

    let mut victim = Command::new(dir.join("victim"))
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let vpid = victim.id() as i32;
    std::thread::sleep(Duration::from_millis(200));
    let mut h = Helper::start();
    assert_eq!(h.call(Request::Seize { pid: vpid }), Response::Ok);
    let (img_r, img_w) = nix::unistd::pipe().unwrap();
    let mut img_r = std::fs::File::from(img_r);
    let runs = vec![
        shared_ipc::PageRun {
            addr: 0x1000_0000,
            len: 1 << 20,
        },
        shared_ipc::PageRun {
            addr: secret_addr & !4095,
            len: 4096,
        },
    ];
    h.chan
        .send(&Request::DumpPages { pid: vpid, runs }, &[img_w.as_fd()])
        .unwrap();
    drop(img_w);
    // The helper is now blocked writing the first buffer into the pipe.
    let mut first = vec![0u8; 65536];
    img_r.read_exact(&mut first).unwrap();
    victim.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    let mut ready = [0u8; 6];
    victim
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    let mut rest = Vec::new();
    img_r.read_to_end(&mut rest).unwrap();
    let (answer, _) = h.chan.recv().unwrap();
    let _ = victim.kill();
    let _ = victim.wait();
    let leaked = first
        .iter()
        .chain(rest.iter())
        .copied()
        .collect::<Vec<u8>>();
    assert!(
        !leaked.windows(16).any(|w| w == b"ROOT-ONLY-SECRET"),
        "the setuid-root program's memory reached the image"
    );
    assert_eq!(
        answer,
        Response::Error {
            kind: ErrorKind::Gone,
            errno: 0
        }
    );
    drop(h.chan);
    let _ = h.child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
