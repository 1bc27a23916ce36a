//! Memory shared between the processes of a tree stays shared after
//! restore: a python3 parent maps 4 MiB of `MAP_SHARED|MAP_ANONYMOUS`
//! memory and a `MAP_SHARED` file mapping, then forks. After dump and
//! restore, each process must see the other's writes to both (a separate
//! copy per process would freeze what each sees of the other), the shared
//! anonymous memory is one object again (`/dev/zero (deleted)`, the same
//! inode in both; the parent maps it from offset 4096 on, the child whole)
//! and each of its pages is stored once in the images.

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

/// Size of the shared anonymous mapping, bytes.
const SHARED_LEN: u64 = 4 << 20;
/// Page size, bytes.
const PAGE: u64 = 4096;

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
    // The child maps the whole object, the parent all but its first page.
    let layout = || {
        let c = mapping(child, SHARED_LEN, zero)?;
        let p = mapping(root, SHARED_LEN - PAGE, zero)?;
        (p == (c.0 + PAGE, c.1)).then_some(c)
    };
    let Some(before) = layout() else {
        t.fail(&format!(
            "unexpected shared mappings before dump: parent {:?}, child {:?}",
            mapping(root, SHARED_LEN - PAGE, zero),
            mapping(child, SHARED_LEN, zero)
        ))
    };

    t.dump(root, &[]);
    reap_dumped(&t, root);
    if let Err(e) = reap(child, Duration::from_secs(10)) {
        t.fail(&format!("dumped child {child} was not killed: {e}"));
    }
    let at_dump = (
        sharing_report(&w, "parent").unwrap().n,
        sharing_report(&w, "child").unwrap().n,
    );
    // Each page is stored once: the parent (first in the tree) stores what
    // it maps, the child only page 0; `criu show` gives both mappings the
    // object's id and offset.
    let images = t.images();
    let out = t
        .criu_ok(&["show", "-D", images.to_str().unwrap(), "--json"])
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| t.fail(&format!("show --json is not JSON: {e}")));
    let shared_vma = |pid: i32, start: u64| -> Option<(u64, u64, u64)> {
        let p = v["processes"]
            .as_array()?
            .iter()
            .find(|p| p["pid"] == pid)?;
        let m = p["memory"]
            .as_array()?
            .iter()
            .find(|m| m["start"].as_u64() == Some(start) && m["backing"] == "shared-anon")?;
        Some((
            m["shmid"].as_u64()?,
            m["offset"].as_u64()?,
            m["bytes_stored"].as_u64()?,
        ))
    };
    let (p, c) = (
        shared_vma(root, before.0 + PAGE),
        shared_vma(child, before.0),
    );
    if p != Some((before.1, PAGE, SHARED_LEN - PAGE)) || c != Some((before.1, 0, PAGE)) {
        t.fail(&format!(
            "show: the shared mappings (shmid, offset, bytes stored) should be (inode {}, 4096, {}) in the parent and (inode, 0, 4096) in the child: parent {p:?}, child {c:?}",
            before.1,
            SHARED_LEN - PAGE
        ));
    }

    t.restore_detached(root, &[]);
    t.track(child);
    assert_sharing(&t, &w, at_dump, "after restore");
    match layout() {
        Some(c) if c.0 == before.0 => {}
        _ => t.fail(&format!(
            "after restore the shared mappings are not one {zero} object at {:#x} (child) and {:#x} (parent): parent {:?}, child {:?}",
            before.0,
            before.0 + PAGE,
            mapping(root, SHARED_LEN - PAGE, zero),
            mapping(child, SHARED_LEN, zero)
        )),
    }
    if mapping(child, 1 << 20, zero).is_some() {
        t.fail("the parent's own shared mapping showed up in the child");
    }
    kill_and_reap(root);
    kill_and_reap(child);
}
