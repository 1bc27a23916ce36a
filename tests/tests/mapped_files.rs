//! Mappings of memfds and of deleted files (`mapped_files.py`, a python3
//! target that maps them with libc's mmap): after dump and restore each
//! mapping maps the same file as the process's descriptors of it and as
//! the other processes' mappings (checked from outside by comparing the
//! inode of `/proc/PID/map_files/START-END` with the descriptor's, and
//! from inside by writing through one and reading through the other),
//! with its name in `/proc/PID/maps`, size, seals and contents; private
//! mappings keep their written pages. A deleted file over `--ghost-limit`
//! is refused with the process left running.

use criu_tests::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The target program.
const PROGRAM: &str = include_str!("mapped_files.py");

/// One line of the target's `layout` file: a mapping it made.
#[derive(Debug, Clone)]
struct Mapped {
    name: String,
    addr: u64,
    len: u64,
    /// Its descriptor in the target, -1 when closed.
    fd: i32,
}

fn layout(w: &Path) -> Vec<Mapped> {
    read(&w.join("layout"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Mapped {
                name: f.first()?.to_string(),
                addr: f.get(1)?.parse().ok()?,
                len: f.get(2)?.parse().ok()?,
                fd: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn find<'a>(l: &'a [Mapped], name: &str) -> &'a Mapped {
    l.iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no mapping {name} in the layout {l:?}"))
}

/// The inode of the file mapped at `m.addr` in `pid`, through
/// `/proc/PID/map_files` (the whole mapping is one VMA).
fn mapped_ino(pid: i32, m: &Mapped) -> Option<u64> {
    let p = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        m.addr,
        m.addr + m.len.div_ceil(4096) * 4096
    );
    std::fs::metadata(p).ok().map(|md| md.ino())
}

fn fd_ino(pid: i32, fd: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|md| md.ino())
}

/// The maps name of the mapping at `addr` in `pid`.
fn map_name(pid: i32, addr: u64) -> Option<String> {
    maps(pid).into_iter().find_map(|l| {
        let (range, rest) = l.split_once(' ')?;
        let start = u64::from_str_radix(range.split_once('-')?.0, 16).ok()?;
        (start == addr).then(|| {
            rest.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
        })
    })
}

/// Starts the target in `mode`, waits until it is ready.
fn start(t: &Test, mode: &str) -> i32 {
    let w = t.work();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PROGRAM).arg(&w).arg(mode);
    let pid = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || w.join("ready").exists()) {
        t.fail(&format!("the target did not start: {}", describe(pid)));
    }
    pid
}

/// Tells the restored target to check itself; fails unless every check
/// passed and there are at least `min`.
fn checks_pass(t: &Test, w: &Path, min: usize) {
    std::fs::write(w.join("go"), "").expect("write go");
    if !wait_for(Duration::from_secs(20), || w.join("result").exists()) {
        t.fail("no result from the restored target");
    }
    let text = read(&w.join("result")).unwrap_or_default();
    let ok = text.lines().filter(|l| l.contains(" ok ")).count();
    if ok < min || text.lines().any(|l| !l.contains(" ok ")) {
        t.fail(&format!("checks after restore ({ok} passed):\n{text}"));
    }
}

#[test]
fn memfd_mappings_stay_the_same_file() {
    let Some(t) = Test::new("memfd_mappings") else {
        return;
    };
    let w = t.work();
    let pid = start(&t, "memfd");
    let child: i32 = read(&w.join("child"))
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or_else(|| t.fail("no child pid"));
    t.track(child);
    let l = layout(&w);
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    if !wait_gone(child, Duration::from_secs(10)) {
        t.fail(&format!("dumped child {child} is still there"));
    }
    // criu show names the memfd behind each mapping.
    let images = t.images();
    let show = t.criu_ok(&["show", "-D", images.to_str().unwrap()]).stdout;
    for name in [
        "criu-shared",
        "criu-closed",
        "criu-sealed",
        "criu-private",
        "criu-future",
    ] {
        if !show.contains(&format!("memfd:{name} (inode ")) {
            t.fail(&format!("criu show does not name memfd:{name}:\n{show}"));
        }
    }

    t.restore_detached(pid, &[]);
    t.track(child);
    for (name, memfd) in [
        ("shared", "criu-shared"),
        ("closed", "criu-closed"),
        ("sealed", "criu-sealed"),
        ("private", "criu-private"),
        ("future", "criu-future"),
    ] {
        let m = find(&l, name);
        let want = format!("/memfd:{memfd} (deleted)");
        for p in [pid, child] {
            if map_name(p, m.addr).as_deref() != Some(want.as_str()) {
                t.fail(&format!(
                    "pid {p}: the mapping at {:#x} is {:?} after restore, not {want}",
                    m.addr,
                    map_name(p, m.addr)
                ));
            }
        }
        let ino = mapped_ino(pid, m);
        if ino.is_none() || mapped_ino(child, m) != ino {
            t.fail(&format!(
                "{name}: parent and child map different files: {ino:?} and {:?}",
                mapped_ino(child, m)
            ));
        }
        if m.fd >= 0 && fd_ino(pid, m.fd) != ino {
            t.fail(&format!(
                "{name}: the mapping (inode {ino:?}) and fd {} (inode {:?}) are two files after restore",
                m.fd,
                fd_ino(pid, m.fd)
            ));
        }
    }
    checks_pass(&t, &w, 18);
    kill_and_reap(child);
    kill_and_reap(pid);
}

#[test]
fn deleted_file_mappings_come_back_deleted() {
    let Some(t) = Test::new("deleted_mappings") else {
        return;
    };
    let w = t.work();
    let pid = start(&t, "deleted");
    let l = layout(&w);
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    let images = t.images();
    let show = t.criu_ok(&["show", "-D", images.to_str().unwrap()]).stdout;
    let saved = format!(
        "{} (deleted, 12288 bytes saved in ghost-",
        w.join("data.bin").display()
    );
    if !show.contains(&saved) {
        t.fail(&format!(
            "criu show does not show the saved deleted file ({saved}):\n{show}"
        ));
    }
    t.restore_detached(pid, &[]);
    let data = w.join("data.bin");
    for (name, path) in [
        ("data-shared", data.clone()),
        ("data-private", data.clone()),
    ] {
        let m = find(&l, name);
        let want = format!("{} (deleted)", path.display());
        if map_name(pid, m.addr).as_deref() != Some(want.as_str()) {
            t.fail(&format!(
                "the mapping at {:#x} is {:?} after restore, not {want}",
                m.addr,
                map_name(pid, m.addr)
            ));
        }
    }
    let so = format!("{} (deleted)", w.join("libcopy.so").display());
    if !maps(pid).iter().any(|l| l.ends_with(&so)) {
        t.fail(&format!(
            "the deleted library is not mapped after restore:\n{}",
            maps(pid).join("\n")
        ));
    }
    if w.join("data.bin").exists() {
        t.fail("restore left a deleted file linked");
    }
    // ro.bin has a new file at its path (an upgrade): that stays, and the
    // old one is made again beside it, deleted.
    let ro = w.join("ro.bin");
    let ro_name = map_name(pid, find(&l, "ro").addr).unwrap_or_default();
    if !ro_name.starts_with(&ro.display().to_string()) || !ro_name.ends_with(" (deleted)") {
        t.fail(&format!(
            "the mapping of the replaced ro.bin is {ro_name:?} after restore"
        ));
    }
    if read(&ro).as_deref() != Some("new version") {
        t.fail("restore changed the new file at ro.bin");
    }
    let mut names: Vec<String> = std::fs::read_dir(&w)
        .expect("work dir")
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    if names != ["layout", "ready", "ro.bin"] {
        t.fail(&format!(
            "restore left other files in the work directory: {names:?}"
        ));
    }
    let shared = find(&l, "data-shared");
    if mapped_ino(pid, shared).is_none() || mapped_ino(pid, shared) != fd_ino(pid, shared.fd) {
        t.fail(&format!(
            "the shared mapping (inode {:?}) and fd {} (inode {:?}) are two files after restore",
            mapped_ino(pid, shared),
            shared.fd,
            fd_ino(pid, shared.fd)
        ));
    }
    checks_pass(&t, &w, 6);
    kill_and_reap(pid);
}

#[test]
fn deleted_mapping_over_the_ghost_limit_is_refused() {
    let Some(t) = Test::new("deleted_mapping_limit") else {
        return;
    };
    let pid = start(&t, "big");
    t.dump_refused(
        pid,
        &[],
        &[
            "mapping",
            "big.bin",
            "was deleted while mapped",
            "--ghost-limit",
        ],
    );
    kill_and_reap(pid);
}

/// A program whose executable was deleted while it ran (as after a package
/// upgrade): a copy of `sleep`, unlinked. After restore it runs on with the
/// same deleted executable (`/proc/PID/exe` and its mappings say
/// `(deleted)`) and finishes its sleep with status 0.
#[test]
fn deleted_executable_runs_on() {
    let Some(t) = Test::new("deleted_executable") else {
        return;
    };
    let w = t.work();
    let exe = w.join("sleep-copy");
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| t.fail("no sleep binary"));
    copy_executable(sleep.as_ref(), &exe);
    let pid = t.spawn_target(Command::new(&exe).arg("3")).id() as i32;
    if !wait_for(Duration::from_secs(5), || proc_state(pid) == Some('S')) {
        t.fail(&format!(
            "the copy of sleep did not start: {}",
            describe(pid)
        ));
    }
    std::fs::remove_file(&exe).expect("unlink the executable");
    let deleted = format!("{} (deleted)", exe.display());
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    t.restore_detached(pid, &[]);
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    if link.to_string_lossy() != deleted {
        t.fail(&format!(
            "/proc/{pid}/exe is {} after restore, not {deleted}",
            link.display()
        ));
    }
    if !maps(pid)
        .iter()
        .any(|l| l.contains(" r-xp ") && l.ends_with(&deleted))
    {
        t.fail(&format!(
            "the deleted executable's code is not mapped after restore:\n{}",
            maps(pid).join("\n")
        ));
    }
    if exe.exists() {
        t.fail("restore left the deleted executable linked");
    }
    match reap(pid, Duration::from_secs(10)) {
        Ok(st) if st.code() == Some(0) => {}
        other => t.fail(&format!(
            "the restored sleep did not finish with status 0: {other:?}"
        )),
    }
}
