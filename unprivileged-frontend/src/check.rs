//! `criu check`: probe the running kernel for everything dump and restore
//! rely on, and say what will not work when something is missing.
//!
//! Every probe acts on a child this command forks for the purpose (or on
//! criu itself), never on another process.
//!
//! The probes that need privilege — seizing and stopping a task, reading
//! its registers and rseq registration, injecting system calls, moving its
//! vDSO, creating a process with a chosen PID — go **through the helper**,
//! with the very requests dump and restore send, rather than being done by
//! criu itself when it runs as root. That way a "Looks good." also proves
//! that the helper is found, starts, speaks our protocol, and is allowed
//! (by its seccomp filter and, in setuid mode, its checks) to do what dump
//! and restore will ask of it; a kernel feature that exists but that the
//! helper cannot use would be of no help. The probes that need no privilege
//! (pidfd, /proc files, memfd, ...) run in criu.

#![deny(unsafe_code)]

use crate::cli::CheckArgs;
use crate::error::{Error, Result};
use crate::helper::{self, Helper};
use crate::remote::{errno_of, find_gadget, Remote};
use shared_ipc::ReleaseMode;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

/// Which checks a feature belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Dump or restore needs it today, on every supported kernel (5.15+).
    Required,
    /// Used when present, but newer than the oldest supported kernel, so
    /// mainstream kernels lack it: skipped by `--ms`.
    Recent,
    /// Only for things not every dump needs (or not implemented yet):
    /// checked with `--all` or `--feature`.
    Optional,
}

/// One kernel feature.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    /// Name for `--feature`.
    pub name: &'static str,
    /// What is probed.
    pub what: &'static str,
    /// What will not work without it.
    pub lost: &'static str,
    /// When it is checked.
    pub class: Class,
}

/// Every feature, in the order they are reported.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "ptrace_seize",
        what: "PTRACE_SEIZE and PTRACE_INTERRUPT of a child (through the helper)",
        lost: "nothing can be dumped or exec'ed: tasks cannot be frozen",
        class: Class::Required,
    },
    Feature {
        name: "syscall_inject",
        what: "running an injected getpid in a seized child (PTRACE_SYSCALL stops)",
        lost: "dump cannot read signal actions, timers, brk; restore cannot rebuild anything",
        class: Class::Required,
    },
    Feature {
        name: "xstate",
        what: "PTRACE_GETREGSET NT_X86_XSTATE",
        lost: "FPU/SSE/AVX registers are not saved: dump refuses",
        class: Class::Required,
    },
    Feature {
        name: "rseq_config",
        what: "PTRACE_GET_RSEQ_CONFIGURATION (Linux 5.13+)",
        lost: "the rseq registration of a task cannot be saved: dump fails",
        class: Class::Required,
    },
    Feature {
        name: "vdso_mremap",
        what: "moving [vdso] with mremap in a seized child",
        lost: "restore cannot put the vDSO at its dumped address",
        class: Class::Required,
    },
    Feature {
        name: "clone3_set_tid",
        what: "clone3 with set_tid: a stub with a chosen free PID (through the helper)",
        lost: "restore cannot recreate a process with its original PID",
        class: Class::Required,
    },
    Feature {
        name: "pidfd_open",
        what: "pidfd_open(2) on a child",
        lost: "the helper cannot hold on to a task safely (PID reuse): dump and restore fail",
        class: Class::Required,
    },
    Feature {
        name: "pidfd_getfd",
        what: "pidfd_getfd(2) on a child's descriptor",
        lost: "descriptors that cannot be reopened by path (pipes, sockets) cannot be taken",
        class: Class::Required,
    },
    Feature {
        name: "process_vm_readv",
        what: "process_vm_readv(2) of a child's memory",
        lost: "memory pages cannot be copied to the images: dump fails",
        class: Class::Required,
    },
    Feature {
        name: "map_files",
        what: "/proc/PID/map_files links",
        lost: "file mappings of deleted or unreachable files cannot be identified",
        class: Class::Required,
    },
    Feature {
        name: "pagemap",
        what: "/proc/PID/pagemap present/file/exclusive bits",
        lost: "dump cannot tell which pages to store (it would store none or all)",
        class: Class::Required,
    },
    Feature {
        name: "vdso",
        what: "[vdso] and [vvar] (or [vvar_vclock]) in /proc/PID/maps",
        lost: "restore cannot match the vDSO layout",
        class: Class::Required,
    },
    Feature {
        name: "prctl_mm_map",
        what: "prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE) (CONFIG_CHECKPOINT_RESTORE)",
        lost: "restore cannot set the code/data/brk/stack/args/env fields and auxv",
        class: Class::Required,
    },
    Feature {
        name: "memfd",
        what: "memfd_create(2)",
        lost: "shared anonymous memory cannot be restored",
        class: Class::Required,
    },
    Feature {
        name: "seccomp",
        what: "seccomp filters with SECCOMP_RET_KILL_PROCESS",
        lost: "the helper cannot confine itself: setuid installs are unsafe and refused",
        class: Class::Required,
    },
    Feature {
        name: "timer_restore_ids",
        what: "prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.15+)",
        lost: "POSIX timers are recreated by creating timers until the IDs match (slower; \
               fails when IDs are far apart)",
        class: Class::Recent,
    },
    Feature {
        name: "userfaultfd",
        what: "userfaultfd(2)",
        lost: "restore puts large runs of pages back with pread64 instead of UFFDIO_COPY \
               (slower: every page is zeroed first); lazy restore (not implemented yet) \
               would not work",
        class: Class::Optional,
    },
    Feature {
        name: "tcp_repair",
        what: "setsockopt(TCP_REPAIR) (needs CAP_NET_ADMIN)",
        lost: "established TCP connections could not be dumped or restored (sockets are not \
               supported yet; this probes the kernel for when they are)",
        class: Class::Optional,
    },
    Feature {
        name: "namespaces",
        what: "/proc/self/ns: mnt, pid, net, ipc, uts, user, cgroup, time",
        lost: "processes in their own namespaces cannot be dumped (-n)",
        class: Class::Optional,
    },
];

/// A feature's outcome: what was found, or why it is missing.
pub type Outcome = std::result::Result<String, String>;

/// Set by the probe child so that its page is present and private there;
/// the same address holds it in the child (a fork copies our layout).
static PROBE_WORD: AtomicU64 = AtomicU64::new(0);
const PROBE_VALUE: u64 = 0x4b43_4548_4355_5243; // "CRUCHECK"

/// The selection the options make.
pub fn selected(a: &CheckArgs) -> Result<Vec<&'static Feature>> {
    if let Some(name) = &a.feature {
        return FEATURES
            .iter()
            .find(|f| f.name == name)
            .map(|f| vec![f])
            .ok_or_else(|| {
                Error::Refused(format!(
                    "unknown feature {name:?}; `criu check --feature list` lists them"
                ))
            });
    }
    Ok(FEATURES
        .iter()
        .filter(|f| match f.class {
            Class::Required => true,
            Class::Recent => !a.ms,
            Class::Optional => a.all,
        })
        .collect())
}

/// Run `criu check`.
///
/// Errors: an unknown `--feature`; missing features are reported on stdout
/// and give exit status 1.
pub fn run(a: &CheckArgs) -> Result<u8> {
    if a.feature.as_deref() == Some("list") {
        for f in FEATURES {
            let class = match f.class {
                Class::Required => "required",
                Class::Recent => "recent (skipped by --ms)",
                Class::Optional => "optional (--all)",
            };
            println!("{:<18} {} [{class}]", f.name, f.what);
        }
        return Ok(0);
    }
    let features = selected(a)?;
    let mut probes = Probes::default();
    let mut missing = 0;
    for f in &features {
        match probes.outcome(f.name) {
            Ok(detail) => crate::info!("{}: ok: {detail}", f.name),
            Err(why) => {
                missing += 1;
                println!("missing: {}: {why}; without it: {}", f.name, f.lost);
            }
        }
    }
    if let Some(s) = &probes.setuid {
        println!("{s}");
    }
    if missing == 0 {
        if let Some(name) = &a.feature {
            println!("{name} is supported.");
        }
        println!("Looks good.");
        Ok(0)
    } else {
        println!("{missing} of {} checked features missing.", features.len());
        Ok(1)
    }
}

/// Outcomes, computed on first use: probes that share a child or a helper
/// run together.
#[derive(Default)]
struct Probes {
    done: HashMap<&'static str, Outcome>,
    local_done: bool,
    helper_done: bool,
    /// The setuid report, when the helper runs for a user.
    setuid: Option<String>,
}

impl Probes {
    fn outcome(&mut self, name: &'static str) -> Outcome {
        const HELPER: &[&str] = &[
            "ptrace_seize",
            "syscall_inject",
            "xstate",
            "rseq_config",
            "vdso_mremap",
            "clone3_set_tid",
        ];
        const CHILD: &[&str] = &[
            "pidfd_open",
            "pidfd_getfd",
            "process_vm_readv",
            "map_files",
            "pagemap",
            "vdso",
        ];
        if HELPER.contains(&name) && !self.helper_done {
            self.helper_done = true;
            self.done.extend(with_child(helper_probes, HELPER));
            let (clone, report) = stub_probe();
            self.done.insert("clone3_set_tid", clone);
            self.setuid = report;
        }
        if CHILD.contains(&name) && !self.local_done {
            self.local_done = true;
            self.done.extend(with_child(child_probes, CHILD));
        }
        if let Some(o) = self.done.get(name) {
            return o.clone();
        }
        match name {
            "prctl_mm_map" => crate::sys::prctl_mm_map_size()
                .map(|s| format!("struct prctl_mm_map is {s} bytes"))
                .map_err(|e| format!("prctl(PR_SET_MM_MAP_SIZE): {e}")),
            "memfd" => nix::sys::memfd::memfd_create(
                c"criu-check",
                nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
            )
            .map(|_| "memfd_create works".to_string())
            .map_err(|e| format!("memfd_create: {}", e.desc())),
            "seccomp" => crate::sys::seccomp_kill_process_available()
                .map(|()| "SECCOMP_RET_KILL_PROCESS available".to_string())
                .map_err(|e| format!("seccomp(SECCOMP_GET_ACTION_AVAIL): {e}")),
            "timer_restore_ids" => crate::sys::timer_restore_ids_get()
                .map(|v| format!("available (currently {v})"))
                .map_err(|e| format!("prctl(PR_TIMER_CREATE_RESTORE_IDS): {e}")),
            "userfaultfd" => crate::sys::userfaultfd()
                .map(|_| "userfaultfd works".to_string())
                .map_err(|e| format!("userfaultfd: {e}")),
            "tcp_repair" => tcp_repair(),
            "namespaces" => namespaces(),
            other => Err(format!("no probe for {other}")),
        }
    }
}

/// Fork a probe child, run `f` on it, kill and reap it. When the child
/// cannot be made, every feature in `names` is missing with that reason.
fn with_child(
    f: fn(i32) -> Vec<(&'static str, Outcome)>,
    names: &[&'static str],
) -> Vec<(&'static str, Outcome)> {
    match crate::sys::fork_probe_child(&PROBE_WORD, PROBE_VALUE) {
        Ok(pid) => {
            // Let the child store its word before we look at it.
            let _ = crate::proc::read_text(&crate::proc::path(pid, "stat"));
            wait_until_sleeping(pid);
            let out = f(pid);
            let npid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(npid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(npid, None);
            out
        }
        Err(e) => names
            .iter()
            .map(|&n| (n, Err(format!("cannot fork a probe child: {e}"))))
            .collect(),
    }
}

/// Wait (a short while) until the child sleeps in pause(2).
fn wait_until_sleeping(pid: i32) {
    for _ in 0..200 {
        if let Ok(st) = crate::proc::read_stat(pid) {
            if st.state == 'S' {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Probes that need no privilege, on the child.
fn child_probes(pid: i32) -> Vec<(&'static str, Outcome)> {
    let mut out = Vec::new();
    let addr = &PROBE_WORD as *const AtomicU64 as u64;
    let pidfd = crate::sys::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"));
    out.push((
        "pidfd_open",
        pidfd
            .as_ref()
            .map(|_| "works".to_string())
            .map_err(Clone::clone),
    ));
    out.push((
        "pidfd_getfd",
        match (&pidfd, probe_fd(pid)) {
            (Ok(p), Some(fd)) => crate::sys::pidfd_getfd(p, fd)
                .map(|ours| format!("took the child's fd {fd} as our fd {}", ours.as_raw_fd()))
                .map_err(|e| format!("pidfd_getfd: {e}")),
            (Ok(_), None) => Err("the child has no descriptor to take".into()),
            (Err(e), _) => Err(format!("needs pidfd_open ({e})")),
        },
    ));

    let mut buf = [0u8; 8];
    let local = &mut [std::io::IoSliceMut::new(&mut buf)];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: addr as usize,
        len: 8,
    }];
    out.push((
        "process_vm_readv",
        match nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(pid), local, &remote) {
            Ok(8) if u64::from_ne_bytes(buf) == PROBE_VALUE => Ok("read the child's memory".into()),
            Ok(8) => Err(format!(
                "read {:#x} where the child holds {PROBE_VALUE:#x}",
                u64::from_ne_bytes(buf)
            )),
            Ok(n) => Err(format!("short read: {n} of 8 bytes")),
            Err(e) => Err(format!("process_vm_readv: {}", e.desc())),
        },
    ));

    let maps = crate::proc::read_maps(pid);
    out.push((
        "map_files",
        match &maps {
            Ok(v) => match v
                .iter()
                .find(|m| !m.name.is_empty() && m.name.starts_with('/'))
            {
                Some(m) => {
                    let p = crate::proc::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
                    std::fs::read_link(&p)
                        .map(|t| format!("{} -> {}", p.display(), t.display()))
                        .map_err(|e| format!("readlink {}: {e}", p.display()))
                }
                None => Err("the child has no file mapping to look at".into()),
            },
            Err(e) => Err(e.to_string()),
        },
    ));

    out.push(("pagemap", pagemap(pid, addr)));

    out.push((
        "vdso",
        match &maps {
            Ok(v) => {
                let vdso = v.iter().find(|m| m.name == "[vdso]");
                let vvar: Vec<&str> = v
                    .iter()
                    .filter(|m| m.name.starts_with("[vvar"))
                    .map(|m| m.name.as_str())
                    .collect();
                match vdso {
                    Some(d) if !vvar.is_empty() => Ok(format!(
                        "[vdso] {} bytes, {}",
                        d.end - d.start,
                        vvar.join(" ")
                    )),
                    Some(_) => Err("[vdso] without [vvar] in /proc/PID/maps".into()),
                    None => Err("no [vdso] in /proc/PID/maps (vdso=0?)".into()),
                }
            }
            Err(e) => Err(e.to_string()),
        },
    ));
    out
}

/// A descriptor the child has open (it inherited ours at fork): its lowest.
fn probe_fd(pid: i32) -> Option<i32> {
    std::fs::read_dir(crate::proc::path(pid, "fd"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .min()
}

/// The pagemap entry of the child's probe page: present, not a file page,
/// exclusively mapped (it wrote there after the fork).
fn pagemap(pid: i32, addr: u64) -> Outcome {
    use std::os::unix::fs::FileExt;
    let p = crate::proc::path(pid, "pagemap");
    let f = std::fs::File::open(&p).map_err(|e| format!("open {}: {e}", p.display()))?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, (addr / 4096) * 8)
        .map_err(|e| format!("read {}: {e}", p.display()))?;
    let e = u64::from_ne_bytes(b);
    let present = e >> 63 & 1 == 1;
    let file = e >> 61 & 1 == 1;
    let exclusive = e >> 56 & 1 == 1;
    if !present {
        return Err(format!("a written page is not reported present ({e:#x})"));
    }
    if file {
        return Err(format!(
            "a private written page is reported as file page ({e:#x})"
        ));
    }
    Ok(format!(
        "present{}, pfn {}",
        if exclusive { ", exclusive" } else { "" },
        if e & ((1 << 55) - 1) != 0 {
            "visible"
        } else {
            "hidden (not root)"
        }
    ))
}

/// Probes through the helper on the child: seize, registers, rseq, an
/// injected getpid, and moving the vDSO. The child is killed afterwards.
fn helper_probes(pid: i32) -> Vec<(&'static str, Outcome)> {
    let mut out: Vec<(&'static str, Outcome)> = Vec::new();
    let mut h = match Helper::spawn() {
        Ok(h) => h,
        Err(e) => {
            let why = format!("criu-helper: {e}");
            return [
                "ptrace_seize",
                "xstate",
                "rseq_config",
                "syscall_inject",
                "vdso_mremap",
            ]
            .into_iter()
            .map(|n| (n, Err(why.clone())))
            .collect();
        }
    };
    if let Err(e) = h.seize(pid) {
        let why = format!("seizing a child: {e}");
        out.push(("ptrace_seize", Err(why.clone())));
        for n in ["xstate", "rseq_config", "syscall_inject", "vdso_mremap"] {
            out.push((n, Err(format!("needs ptrace_seize ({why})"))));
        }
        h.finish();
        return out;
    }
    out.push(("ptrace_seize", Ok("seized and stopped a child".into())));
    out.push((
        "xstate",
        match h.get_regs(pid) {
            Ok((_, x)) if x.len() >= 576 => Ok(format!("{} bytes of XSAVE area", x.len())),
            Ok((_, x)) => Err(format!("only {} bytes of XSAVE area", x.len())),
            Err(e) => Err(e.to_string()),
        },
    ));
    out.push((
        "rseq_config",
        h.get_rseq(pid)
            .map(|c| {
                if c.rseq_abi_pointer != 0 {
                    format!("rseq registered at {:#x}", c.rseq_abi_pointer)
                } else {
                    "works (no rseq registered in the child)".into()
                }
            })
            .map_err(|e| e.to_string()),
    ));
    let inject = inject_and_move(&mut h, pid);
    out.push(("syscall_inject", inject.0));
    out.push(("vdso_mremap", inject.1));
    if let Err(e) = h.release(pid, ReleaseMode::Kill) {
        crate::warn!("killing the probe child {pid}: {e}");
    }
    h.finish();
    out
}

fn inject_and_move(h: &mut Helper, pid: i32) -> (Outcome, Outcome) {
    let maps = match crate::proc::read_maps(pid) {
        Ok(m) => m,
        Err(e) => return (Err(e.to_string()), Err("needs syscall_inject".into())),
    };
    let r = Remote::new(pid);
    let injected = (|| -> std::result::Result<String, String> {
        let gadget = find_gadget(h, pid, &maps).map_err(|e| e.to_string())?;
        h.set_gadget(pid, gadget).map_err(|e| e.to_string())?;
        let got = r
            .raw(h, libc::SYS_getpid, [0; 6])
            .map_err(|e| e.to_string())?;
        if got != i64::from(pid) {
            return Err(format!("injected getpid returned {got}, not {pid}"));
        }
        Ok(format!("getpid in the child returned {got}"))
    })();
    let Ok(_) = injected else {
        return (injected, Err("needs syscall_inject".into()));
    };
    let Some(vdso) = maps.iter().find(|m| m.name == "[vdso]") else {
        return (injected, Err("the child has no [vdso]".into()));
    };
    let len = vdso.end - vdso.start;
    let moved = (|| -> std::result::Result<String, String> {
        let hole = r
            .call(
                h,
                "mmap(hole)",
                libc::SYS_mmap,
                [
                    0,
                    len,
                    libc::PROT_NONE as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .map_err(|e| e.to_string())?;
        let got = r
            .raw(
                h,
                libc::SYS_mremap,
                [
                    vdso.start,
                    len,
                    len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    hole,
                    0,
                ],
            )
            .map_err(|e| e.to_string())?;
        if let Some(e) = errno_of(got) {
            return Err(format!("mremap([vdso]): {}", e.desc()));
        }
        let after = crate::proc::read_maps(pid).map_err(|e| e.to_string())?;
        match after.iter().find(|m| m.name == "[vdso]") {
            Some(m) if m.start == hole => Ok(format!("moved [vdso] to {hole:#x}")),
            Some(m) => Err(format!(
                "[vdso] is at {:#x} after mremap to {hole:#x}",
                m.start
            )),
            None => Err("[vdso] lost its name after mremap".into()),
        }
    })();
    (injected, moved)
}

/// A free PID for the clone3 probe: the highest one below `pid_max` with no
/// /proc entry (so no process, thread or zombie holds it).
fn free_pid() -> Option<i32> {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (300..max)
        .rev()
        .take(1000)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
}

/// clone3 with set_tid through the helper; also the setuid report.
fn stub_probe() -> (Outcome, Option<String>) {
    let mut h = match Helper::spawn() {
        Ok(h) => h,
        Err(e) => return (Err(format!("criu-helper: {e}")), None),
    };
    let report = (h.caller_uid != 0).then(|| setuid_report(h.caller_uid));
    let Some(pid) = free_pid() else {
        h.finish();
        return (Err("no free PID found to try".into()), report);
    };
    let out = match h.create_stub(pid, &[]) {
        Ok(_) => {
            let got = h.syscall(pid, libc::SYS_getpid, [0; 6]);
            let o = match got {
                Ok(g) if g == i64::from(pid) => Ok(format!("created a stub with PID {pid}")),
                Ok(g) => Err(format!("the stub made for PID {pid} says it is {g}")),
                Err(e) => Err(format!("running getpid in the stub: {e}")),
            };
            if let Err(e) = h.release(pid, ReleaseMode::Kill) {
                crate::warn!("killing the probe stub {pid}: {e}");
            }
            o
        }
        Err(e) => Err(format!("creating a stub with PID {pid}: {e}")),
    };
    h.finish();
    (out, report)
}

/// What `criu check` says about a setuid install.
fn setuid_report(caller: u32) -> String {
    use std::os::unix::fs::MetadataExt;
    let path = helper::locate()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| e.to_string());
    let (install, setuid) = match std::fs::metadata(&path) {
        Ok(m) => (
            format!(
                "owner uid {} gid {}, mode {:04o}",
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            ),
            m.mode() & 0o4000 != 0 && m.uid() == 0,
        ),
        Err(e) => (format!("cannot stat: {e}"), false),
    };
    // A setuid bit on a filesystem mounted nosuid is ignored by exec(2).
    let nosuid = nix::sys::statvfs::statvfs(path.as_str())
        .map(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID))
        .unwrap_or(false);
    if setuid && nosuid {
        format!(
            "helper {path} ({install}) is setuid root but its filesystem is mounted nosuid, so \
             it does not run with privilege: install it on a filesystem mounted without nosuid"
        )
    } else if setuid {
        format!(
            "setuid mode: helper {path} ({install}, setuid root); caller uid {caller}: you may \
             dump, restore and exec only processes whose uids and gids are all {caller} and \
             that hold no capabilities"
        )
    } else {
        format!(
            "helper {path} ({install}) is not setuid root and you (uid {caller}) are not root: \
             only what your own uid may do will work; run criu as root or install the helper \
             setuid root"
        )
    }
}

fn tcp_repair() -> Outcome {
    use nix::sys::socket::{setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType};
    let s = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {}", e.desc()))?;
    setsockopt(&s, sockopt::TcpRepair, &1)
        .map(|()| "TCP_REPAIR can be set".to_string())
        .map_err(|e| format!("setsockopt(TCP_REPAIR): {}", e.desc()))
}

fn namespaces() -> Outcome {
    let all = ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup", "time"];
    let missing: Vec<&str> = all
        .iter()
        .copied()
        .filter(|n| std::fs::symlink_metadata(format!("/proc/self/ns/{n}")).is_err())
        .collect();
    if missing.is_empty() {
        Ok(all.join(" "))
    } else {
        Err(format!("no namespace support for: {}", missing.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::LogArgs;

    fn args(ms: bool, all: bool, feature: Option<&str>) -> CheckArgs {
        CheckArgs {
            ms,
            all,
            feature: feature.map(String::from),
            log: LogArgs {
                log_file: None,
                verbosity: None,
            },
        }
    }

    #[test]
    fn selection() {
        let names =
            |a: &CheckArgs| -> Vec<&str> { selected(a).unwrap().iter().map(|f| f.name).collect() };
        let def = names(&args(false, false, None));
        assert!(def.contains(&"ptrace_seize") && def.contains(&"timer_restore_ids"));
        assert!(!def.contains(&"tcp_repair"));
        assert!(!names(&args(true, false, None)).contains(&"timer_restore_ids"));
        assert!(names(&args(false, true, None)).contains(&"tcp_repair"));
        assert_eq!(names(&args(false, false, Some("memfd"))), ["memfd"]);
        assert!(selected(&args(false, false, Some("nope"))).is_err());
        let mut seen = std::collections::HashSet::new();
        assert!(FEATURES.iter().all(|f| seen.insert(f.name)));
    }
}
