//! Private pages a child inherited at fork and neither process changed stay
//! shared copy-on-write after restore, as upstream criu keeps them: a
//! python3 parent fills 16 MiB of private anonymous memory with a pattern
//! and forks; the child changes page 1. Seen from outside (as root,
//! /proc/PID/pagemap shows page frame numbers, see
//! Documentation/admin-guide/mm/pagemap.rst): after restore every other page
//! of the buffer is the same frame in both processes and page 1 is not, and
//! the tree's summed Pss stays near its value before the dump (a copy per
//! process would add the whole buffer). Seen from inside: each process reads
//! its own page 1, and a page the child writes after restore is its own
//! (the parent still reads its pattern there); page 4, which the child
//! dropped (`MADV_DONTNEED`), reads as zeros in the child only. A second,
//! small mapping that both made read-only and mlock'ed after the child
//! changed its page 0 comes back read-only, locked, with each process's
//! own page 0.

use criu_tests::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Page size, bytes.
const PAGE: u64 = 4096;
/// Pages of the buffer.
const PAGES: u64 = 4096;

const PROGRAM: &str = r#"
import os, sys, time, mmap, ctypes
d = sys.argv[1]
P = 4096
N = 4096
libc = ctypes.CDLL(None, use_errno=True)
m = mmap.mmap(-1, N * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
r = mmap.mmap(-1, 4 * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
raddr = ctypes.addressof(ctypes.c_char.from_buffer(r))
def pat(i):
    return b"p%07d" % i
for i in range(N):
    m[i * P:i * P + 8] = pat(i)
for i in range(4):
    r[i * P:i * P + 8] = b"parent_r"
pid = os.fork()
role = "child" if pid == 0 else "parent"
if pid == 0:
    m[P:P + 8] = b"child001"
    m.madvise(mmap.MADV_DONTNEED, 4 * P, P)
    r[0:8] = b"child_r0"
if libc.mprotect(ctypes.c_void_p(raddr), 4 * P, 1) or libc.mlock(ctypes.c_void_p(raddr), 4 * P):
    sys.exit("mprotect/mlock: errno %d" % ctypes.get_errno())
page4 = bytes(8) if role == "child" else pat(4)
r0 = b"child_r0" if role == "child" else b"parent_r"
n = 0
while True:
    n += 1
    if role == "child" and os.path.exists(d + "/write3"):
        m[3 * P:3 * P + 8] = b"child003"
    mine = b"child001" if role == "child" else pat(1)
    ok = m[P:P + 8] == mine and all(m[i * P:i * P + 8] == pat(i) for i in (0, 2, N - 1))
    ok = ok and m[4 * P:4 * P + 8] == page4 and r[0:8] == r0 and r[P:P + 8] == b"parent_r"
    page3 = m[3 * P:3 * P + 8].decode()
    open(d + f"/{role}.tmp", "w").write(f"{os.getpid()} {n} {addr} {int(ok)} {page3} {raddr}")
    os.replace(d + f"/{role}.tmp", d + f"/{role}")
    time.sleep(0.05)
"#;

/// A process's report: pid, counter, buffer address, whether its pages
/// hold what it expects, the first 8 bytes of page 3 and the address of
/// the read-only locked mapping.
#[derive(Debug, Clone)]
struct Report {
    pid: i32,
    n: u64,
    addr: u64,
    ok: bool,
    page3: String,
    raddr: u64,
}

fn report(dir: &Path, role: &str) -> Option<Report> {
    let text = read(&dir.join(role))?;
    let f: Vec<&str> = text.split_whitespace().collect();
    (f.len() == 6).then_some(())?;
    Some(Report {
        pid: f[0].parse().ok()?,
        n: f[1].parse().ok()?,
        addr: f[2].parse().ok()?,
        ok: f[3] == "1",
        page3: f[4].to_string(),
        raddr: f[5].parse().ok()?,
    })
}

/// The page frame number of the page at `addr` in `pid`, if present.
fn pfn(pid: i32, addr: u64) -> Option<u64> {
    let pm = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
    let mut e = [0u8; 8];
    pm.read_exact_at(&mut e, addr / PAGE * 8).ok()?;
    let ent = u64::from_ne_bytes(e);
    let pfn = ent & ((1 << 55) - 1);
    (ent >> 63 == 1 && pfn != 0).then_some(pfn)
}

/// The permissions and whether it is locked (`lo` in VmFlags, see proc(5))
/// of the mapping of `pid` that starts at `start`.
fn perms_locked(pid: i32, start: u64) -> Option<(String, bool)> {
    let text = read(Path::new(&format!("/proc/{pid}/smaps")))?;
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some((s, _)) = f.first().and_then(|r| r.split_once('-')) else {
            continue;
        };
        if u64::from_str_radix(s, 16) != Ok(start) || f.len() < 5 {
            continue;
        }
        let perms = f[1].to_string();
        let flags = lines.find_map(|l| l.strip_prefix("VmFlags:"))?;
        return Some((perms, flags.split_whitespace().any(|x| x == "lo")));
    }
    None
}

/// Pages of the buffer but 1 and 4 (changed and dropped by the child)
/// that are the same frame in both processes, and whether page 1 is.
fn shared_pages(parent: i32, child: i32, addr: u64) -> (u64, bool) {
    let same = |i: u64| {
        let a = addr + i * PAGE;
        matches!((pfn(parent, a), pfn(child, a)), (Some(x), Some(y)) if x == y)
    };
    (
        (0..PAGES).filter(|&i| i != 1 && same(i)).count() as u64,
        same(1),
    )
}

/// Summed Pss of the processes, KiB (proc(5), /proc/PID/smaps_rollup).
fn pss(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| read(Path::new(&format!("/proc/{p}/smaps_rollup"))))
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("Pss:"))
                .filter_map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

#[test]
fn unchanged_pages_stay_shared_after_restore() {
    let Some(t) = Test::new("cow_sharing") else {
        return;
    };
    let w = t.work();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PROGRAM).arg(&w);
    let root = t.spawn_target(&mut cmd).id() as i32;
    let started = || {
        let (Some(p), Some(c)) = (report(&w, "parent"), report(&w, "child")) else {
            return None;
        };
        (p.n > 3 && c.n > 3).then_some((p, c))
    };
    if !wait_for(Duration::from_secs(20), || started().is_some()) {
        t.fail(&format!("the tree did not start: {}", describe(root)));
    }
    let (p, c) = started().unwrap();
    t.track(c.pid);
    if p.pid != root || p.addr != c.addr || p.raddr != c.raddr || !p.ok || !c.ok {
        t.fail(&format!("unexpected reports before dump: {p:?} {c:?}"));
    }
    let addr = p.addr;
    let before = shared_pages(root, c.pid, addr);
    if before != (PAGES - 2, false) {
        t.fail(&format!(
            "before dump, {} of {} unchanged pages share a frame (page 1 shared: {}); the test's premise fails",
            before.0,
            PAGES - 2,
            before.1
        ));
    }
    let pss_before = pss(&[root, c.pid]);

    t.dump(root, &[]);
    reap_dumped(&t, root);
    if let Err(e) = reap(c.pid, Duration::from_secs(10)) {
        t.fail(&format!("dumped child {} was not killed: {e}", c.pid));
    }
    let at_dump = (
        report(&w, "parent").unwrap().n,
        report(&w, "child").unwrap().n,
    );
    t.restore_detached(root, &[]);
    t.track(c.pid);

    let running = || {
        let (Some(p), Some(c)) = (report(&w, "parent"), report(&w, "child")) else {
            return None;
        };
        (p.n > at_dump.0 + 2 && c.n > at_dump.1 + 2).then_some((p, c))
    };
    if !wait_for(Duration::from_secs(10), || running().is_some()) {
        t.fail(&format!(
            "the restored tree does not run: parent {:?}, child {:?}",
            report(&w, "parent"),
            report(&w, "child")
        ));
    }
    let (p, c2) = running().unwrap();
    if !p.ok || !c2.ok || p.page3 != "p0000003" || c2.page3 != "p0000003" {
        t.fail(&format!(
            "after restore the processes do not read their own pages: {p:?} {c2:?}"
        ));
    }
    for pid in [root, c.pid] {
        let got = perms_locked(pid, c.raddr);
        if got != Some(("r--p".to_string(), true)) {
            t.fail(&format!(
                "pid {pid}: the read-only locked mapping at {:#x} came back as {got:?}",
                c.raddr
            ));
        }
    }
    let after = shared_pages(root, c.pid, addr);
    let pss_after = pss(&[root, c.pid]);
    if after != (PAGES - 2, false) {
        t.fail(&format!(
            "after restore {} of {} unchanged pages share a frame between parent and child (page 1 shared: {}); Pss {pss_before} kB before dump, {pss_after} kB now",
            after.0,
            PAGES - 2,
            after.1
        ));
    }
    // A copy per process would add the whole 16 MiB buffer (and the
    // interpreter's own inherited pages).
    let buffer_kib = PAGES * PAGE / 1024;
    if pss_after > pss_before + buffer_kib / 2 {
        t.fail(&format!(
            "the tree's Pss grew from {pss_before} kB before dump to {pss_after} kB after restore"
        ));
    }

    // A page the child writes now is its own: the parent still reads its
    // pattern there, and the two frames differ.
    std::fs::write(w.join("write3"), b"").expect("write3");
    let since = c2.n;
    if !wait_for(Duration::from_secs(10), || {
        report(&w, "child").is_some_and(|r| r.n > since && r.page3 == "child003")
    }) {
        t.fail(&format!(
            "the child did not write its page 3: {:?}",
            report(&w, "child")
        ));
    }
    let since = report(&w, "parent").unwrap().n;
    if !wait_for(Duration::from_secs(10), || {
        report(&w, "parent").is_some_and(|r| r.n > since + 1)
    }) {
        t.fail("the restored parent stopped counting");
    }
    let p = report(&w, "parent").unwrap();
    let c3 = report(&w, "child").unwrap();
    if p.page3 != "p0000003" || !p.ok || !c3.ok {
        t.fail(&format!(
            "the child's write reached the parent, or a page changed: {p:?} {c3:?}"
        ));
    }
    let page3 = addr + 3 * PAGE;
    if pfn(root, page3) == pfn(c.pid, page3) {
        t.fail("page 3 is still one frame after the child wrote it");
    }
    kill_and_reap(root);
    kill_and_reap(c.pid);
}
