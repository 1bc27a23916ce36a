//! Memory shared between the processes of a tree stays shared after
//! restore: a python3 parent maps 4 MiB of `MAP_SHARED|MAP_ANONYMOUS`
//! memory and a `MAP_SHARED` file mapping, then forks. After dump and
//! restore, each process must see the other's writes to both (a separate
//! copy per process would freeze what each sees of the other), the shared
//! anonymous memory is one object again (`/dev/zero (deleted)`, the same
//! inode in both) and its pages are stored once in the images.

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

/// Size of the shared anonymous mapping, bytes.
const SHARED_LEN: u64 = 4 << 20;

/// The `/proc/PID/maps` line of the mapping `len` bytes long named `name`:
/// (start, inode).
fn mapping(pid: i32, len: u64, name: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (s, e) = f.first()?.split_once('-')?;
        let (s, e) = (
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        );
        let rest = f.get(5..)?.join(" ");
        let inode: u64 = f.get(4)?.parse().ok()?;
        (e - s == len && rest == name).then_some((s, inode))
    })
}

#[test]
fn shared_memory_stays_shared_across_fork() {
    let Some(t) = Test::new("shared_memory") else {
        return;
    };
    let w = t.work();
    std::fs::write(w.join("shared.dat"), vec![0u8; 4096]).expect("shared.dat");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SHARED_MEMORY_PROGRAM).arg(&w);
    let root = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        sharing_report(&w, "parent").is_some_and(|r| r.n > 3)
            && sharing_report(&w, "child").is_some_and(|r| r.n > 3)
    }) {
        t.fail(&format!("the tree did not start: {}", describe(root)));
    }
    let child = sharing_report(&w, "child").unwrap().pid;
    t.track(child);
    assert_sharing(&t, &w, (0, 0), "before dump");
    let zero = "/dev/zero (deleted)";
    let before = mapping(root, SHARED_LEN, zero).expect("the shared mapping in maps");

    t.dump(root, &[]);
    reap_dumped(&t, root);
    if let Err(e) = reap(child, Duration::from_secs(10)) {
        t.fail(&format!("dumped child {child} was not killed: {e}"));
    }
    let at_dump = (
        sharing_report(&w, "parent").unwrap().n,
        sharing_report(&w, "child").unwrap().n,
    );
    // The 4 MiB are stored once, by the parent; `criu show` gives both
    // mappings the same object id.
    let images = t.images();
    let out = t
        .criu_ok(&["show", "-D", images.to_str().unwrap(), "--json"])
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| t.fail(&format!("show --json is not JSON: {e}")));
    let shared_vma = |pid: i32| -> Option<(u64, u64)> {
        let p = v["processes"]
            .as_array()?
            .iter()
            .find(|p| p["pid"] == pid)?;
        let m = p["memory"]
            .as_array()?
            .iter()
            .find(|m| m["start"].as_u64() == Some(before.0) && m["backing"] == "shared-anon")?;
        Some((m["shmid"].as_u64()?, m["bytes_stored"].as_u64()?))
    };
    match (shared_vma(root), shared_vma(child)) {
        (Some((a, SHARED_LEN)), Some((b, 0))) if a == b && a == before.1 => {}
        (p, c) => t.fail(&format!(
            "show: the shared mapping (shmid, bytes stored) should be (inode {}, {SHARED_LEN}) in the parent and stored 0 in the child: parent {p:?}, child {c:?}",
            before.1
        )),
    }

    t.restore_detached(root, &[]);
    t.track(child);
    assert_sharing(&t, &w, at_dump, "after restore");
    let (p, c) = (
        mapping(root, SHARED_LEN, zero),
        mapping(child, SHARED_LEN, zero),
    );
    match (p, c) {
        (Some(p), Some(c)) if p == c && p.0 == before.0 => {}
        _ => t.fail(&format!(
            "the shared mapping is not one {zero} object at {:#x} in both: parent {p:?}, child {c:?}",
            before.0
        )),
    }
    if mapping(child, 1 << 20, zero).is_some() {
        t.fail("the parent's own shared mapping showed up in the child");
    }
    kill_and_reap(root);
    kill_and_reap(child);
}
