//! The restore page path, checked page by page from outside (/proc/PID/mem
//! and /proc/PID/pagemap, see proc(5)): large runs go through userfaultfd
//! (`UFFDIO_COPY`, in two threads) unless transparent huge pages would
//! serve them, small runs through preadv; holes stay
//! holes, zero-filled pages read as zeros, a read-only mapping gets its
//! contents and its protection back, `MADV_HUGEPAGE`/`MADV_NOHUGEPAGE`
//! mappings their flags.

use criu_tests::*;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

const PAGE: u64 = 4096;
/// Pages never touched (holes) and pages written with zeros in region A.
const HOLES: [(u64, u64); 3] = [(0, 3), (4096, 4160), (16381, 16384)];
const ZEROS: (u64, u64) = (8000, 8010);

/// Region A: 64 MiB private anonymous `MAP_NORESERVE` memory with
/// `MADV_RANDOM` and `MADV_NOHUGEPAGE` (so that untouched pages stay holes), page i holding `i | 1` in its first
/// word and `!i` in its last, except the holes (never touched) and the
/// zero pages (written with zeros). Region B: 8 MiB with `MADV_HUGEPAGE`
/// and `MADV_SEQUENTIAL`,
/// filled the same way (no holes), then made read-only. Writes both
/// addresses to argv[1], then sleeps.
const PROGRAM: &str = r#"
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
holes = [(0, 3), (4096, 4160), (16381, 16384)]
zeros = (8000, 8010)
def fill(a, pages, skip):
    for i in range(pages):
        if any(s <= i < e for s, e in skip):
            continue
        if zeros[0] <= i < zeros[1] and skip:
            ctypes.memset(a + i * 4096, 0, 4096)
            continue
        ctypes.c_uint64.from_address(a + i * 4096).value = i | 1
        ctypes.c_uint64.from_address(a + i * 4096 + 4088).value = ~i & (2**64 - 1)
a = libc.mmap(None, 64 << 20, 3, 0x02 | 0x20 | 0x4000, -1, 0)  # MAP_NORESERVE
assert libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(64 << 20), 15) == 0  # MADV_NOHUGEPAGE
assert libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(64 << 20), 1) == 0  # MADV_RANDOM
fill(a, 16384, holes)
b = libc.mmap(None, 8 << 20, 3, 0x02 | 0x20, -1, 0)
assert libc.madvise(ctypes.c_void_p(b), ctypes.c_size_t(8 << 20), 14) == 0  # MADV_HUGEPAGE
assert libc.madvise(ctypes.c_void_p(b), ctypes.c_size_t(8 << 20), 2) == 0  # MADV_SEQUENTIAL
fill(b, 2048, [])
assert libc.mprotect(ctypes.c_void_p(b), ctypes.c_size_t(8 << 20), 1) == 0
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{a:#x} {b:#x}\n")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(0.05)
"#;

/// What page `i` of a region should hold: `None` for zeros.
fn expected(i: u64, with_holes: bool) -> Option<(u64, u64)> {
    let hole = with_holes && HOLES.iter().any(|&(s, e)| (s..e).contains(&i));
    let zero = with_holes && (ZEROS.0..ZEROS.1).contains(&i);
    (!hole && !zero).then_some((i | 1, !i))
}

/// Descriptions of the pages of `pages` pages at `addr` in `pid` that differ
/// from [`expected`] (at most 5, then a count).
fn bad_pages(pid: i32, addr: u64, pages: u64, with_holes: bool) -> Vec<String> {
    let buf = read_memory(pid, addr, pages * PAGE);
    let mut bad = Vec::new();
    for i in 0..pages {
        let p = &buf[(i * PAGE) as usize..((i + 1) * PAGE) as usize];
        let ok = match expected(i, with_holes) {
            None => p.iter().all(|&b| b == 0),
            Some((first, last)) => {
                u64::from_ne_bytes(p[..8].try_into().unwrap()) == first
                    && u64::from_ne_bytes(p[4088..].try_into().unwrap()) == last
                    && p[8..4088].iter().all(|&b| b == 0)
            }
        };
        if !ok {
            bad.push(format!("page {i} at {:#x}", addr + i * PAGE));
        }
    }
    if bad.len() > 5 {
        let n = bad.len();
        bad.truncate(5);
        bad.push(format!("... {n} in all"));
    }
    bad
}

/// Whether page `i` of the region at `addr` is present (pagemap bit 63).
fn present(pid: i32, addr: u64, i: u64) -> bool {
    let pm = std::fs::File::open(format!("/proc/{pid}/pagemap")).expect("open pagemap");
    let mut e = [0u8; 8];
    pm.read_exact_at(&mut e, (addr / PAGE + i) * 8)
        .expect("read pagemap");
    u64::from_ne_bytes(e) >> 63 == 1
}

/// The line starting with `key` in the smaps block of the VMA starting at
/// `addr` (see proc(5), /proc/PID/smaps).
fn smaps_line(pid: i32, addr: u64, key: &str) -> String {
    let smaps = read(std::path::Path::new(&format!("/proc/{pid}/smaps"))).unwrap_or_default();
    let head = format!("{addr:x}-");
    smaps
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with(&head))
        .find(|l| l.starts_with(key))
        .unwrap_or("")
        .to_string()
}

/// The VmFlags line of the VMA starting at `addr`.
fn vm_flags(pid: i32, addr: u64) -> String {
    smaps_line(pid, addr, "VmFlags:")
}

/// The VMA's `AnonHugePages` in kB.
fn anon_huge_kb(pid: i32, addr: u64) -> u64 {
    smaps_line(pid, addr, "AnonHugePages:")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn large_runs_holes_zero_pages_and_read_only_memory_come_back() {
    let Some(t) = Test::new("page_restore") else {
        return;
    };
    let state = t.work().join("regions");
    let pid = t
        .spawn_target(Command::new("python3").args(["-c", PROGRAM]).arg(&state))
        .id() as i32;
    if !wait_for(Duration::from_secs(60), || state.exists()) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    let text = read(&state).unwrap();
    let addrs: Vec<u64> = text
        .split_whitespace()
        .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap())
        .collect();
    let (a, b) = (addrs[0], addrs[1]);
    // Presence first: reading a hole through /proc/PID/mem maps the zero
    // page there.
    let hole_present = || {
        HOLES
            .iter()
            .flat_map(|&(s, e)| s..e)
            .find(|&i| present(pid, a, i))
    };
    if let Some(i) = hole_present() {
        t.fail(&format!(
            "set-up: hole page {i} of region A is present before the dump"
        ));
    }
    for (addr, pages, holes) in [(a, 16384, true), (b, 2048, false)] {
        let bad = bad_pages(pid, addr, pages, holes);
        if !bad.is_empty() {
            t.fail(&format!("set-up: wrong pages before the dump: {bad:?}"));
        }
    }
    let flags_before = (vm_flags(pid, a), vm_flags(pid, b));
    let huge_before = anon_huge_kb(pid, b);

    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    // Over 2 MiB: the pages are striped, 1 MiB at a time, over two files.
    let size = |name: String| {
        std::fs::metadata(t.images().join(&name))
            .map(|m| m.len())
            .unwrap_or_else(|e| t.fail(&format!("{name}: {e}")))
    };
    let (first, second) = (
        size(format!("pages-{pid}.img")),
        size(format!("pages-{pid}.1.img")),
    );
    if first < 30 << 20 || second < 30 << 20 || first + second < 70 << 20 {
        t.fail(&format!(
            "pages files of {first} and {second} bytes: expected about 36 MiB each"
        ));
    }
    t.restore_detached(pid, &[]);
    if let Some(i) = hole_present() {
        t.fail(&format!(
            "hole page {i} of region A is present after restore"
        ));
    }
    for (addr, pages, holes) in [(a, 16384, true), (b, 2048, false)] {
        let bad = bad_pages(pid, addr, pages, holes);
        if !bad.is_empty() {
            t.fail(&format!(
                "after restore, region at {addr:#x}: wrong pages {bad:?}"
            ));
        }
    }
    let flags_after = (vm_flags(pid, a), vm_flags(pid, b));
    if flags_after != flags_before {
        t.fail(&format!(
            "VmFlags changed:\n  before {flags_before:?}\n  after  {flags_after:?}"
        ));
    }
    let has = |l: &str, f: &str| l.split_whitespace().any(|x| x == f);
    if !["nh", "rr", "nr"].iter().all(|f| has(&flags_after.0, f))
        || !has(&flags_after.1, "hg")
        || !has(&flags_after.1, "sr")
        || has(&flags_after.1, "wr")
    {
        t.fail(&format!(
            "region A should keep MADV_NOHUGEPAGE (nh), MADV_RANDOM (rr) and MAP_NORESERVE \
             (nr), region B MADV_HUGEPAGE (hg), MADV_SEQUENTIAL (sr) and stay read-only: \
             {flags_after:?}"
        ));
    }
    // Region B's transparent huge pages come back (userfaultfd would fill
    // it with 4 KiB pages: it takes the pread path).
    let huge_after = anon_huge_kb(pid, b);
    if huge_after < huge_before {
        t.fail(&format!(
            "region B had {huge_before} kB of AnonHugePages, {huge_after} kB after restore"
        ));
    }
    // Region A (64 MiB less the holes and the small runs around them) goes
    // through userfaultfd.
    t.assert_pages_copied_with_userfaultfd(pid, 60 << 20);
    kill_and_reap(pid);
}
