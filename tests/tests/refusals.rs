//! Requests criu must refuse, and what a refusal must leave behind: a
//! non-zero exit with one clear error line, no process with the restored pid
//! (restore), and the dumped process running and untouched (dump). After
//! each refused restore the cause is undone and the same images restore fine.

use criu_tests::*;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn dump_of_nonexistent_pid() {
    let Some(t) = Test::new("dump_nonexistent") else {
        return;
    };
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id() as i32;
    child.wait().expect("wait true");
    let images = t.images();
    t.criu_err(
        &[
            "dump",
            "-t",
            &pid.to_string(),
            "-D",
            images.to_str().unwrap(),
            "-o",
            "dump.log",
            "-v4",
        ],
        &[&format!("pid {pid} does not exist")],
    );
}

#[test]
fn restore_while_original_runs() {
    let Some(t) = Test::new("restore_pid_in_use") else {
        return;
    };
    let w = t.start_workload();
    t.dump(w.pid, &["-R"]);
    let images = t.images();
    t.criu_err(
        &[
            "restore",
            "-d",
            "-D",
            images.to_str().unwrap(),
            "-o",
            "restore.log",
            "-v4",
        ],
        &[&format!("pid {} is already in use", w.pid)],
    );
    t.assert_workload_unharmed(&w, "after the refused restore");
    kill_and_reap(w.pid);
}

#[test]
fn restore_over_zombie() {
    let Some(t) = Test::new("restore_over_zombie") else {
        return;
    };
    let w = t.start_workload();
    t.dump(w.pid, &[]);
    // Not reaped yet: the dumped process is our zombie and holds its pid.
    if !wait_for(Duration::from_secs(5), || proc_state(w.pid) == Some('Z')) {
        t.fail(&format!("dumped process did not die: {}", describe(w.pid)));
    }
    let images = t.images();
    t.criu_err(
        &[
            "restore",
            "-d",
            "-D",
            images.to_str().unwrap(),
            "-o",
            "restore.log",
            "-v4",
        ],
        &["held by a zombie"],
    );
    if proc_state(w.pid) != Some('Z') || ppid(w.pid) != Some(std::process::id() as i32) {
        t.fail(&format!(
            "the zombie should be left as it was: {}",
            describe(w.pid)
        ));
    }
    reap_dumped(&t, w.pid);
    t.restore_detached(w.pid, &[]);
    t.workload_check(&w, "restore after reaping the zombie");
    kill_and_reap(w.pid);
}

/// Dumps the workload (killing it), damages the images or its files with
/// `damage`, expects a refused restore naming `needles`, repairs with
/// `repair` and expects the same images to restore and pass the self-check.
fn refused_then_repaired(
    name: &str,
    damage: impl FnOnce(&Test, &Workload) -> Vec<String>,
    repair: impl FnOnce(&Test, &Workload),
) {
    let Some(t) = Test::new(name) else { return };
    let w = t.start_workload();
    t.dump(w.pid, &[]);
    reap_dumped(&t, w.pid);

    let needles = damage(&t, &w);
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    let images = t.images();
    t.criu_err(
        &[
            "restore",
            "-d",
            "-D",
            images.to_str().unwrap(),
            "-o",
            "restore.log",
            "-v4",
        ],
        &needles,
    );
    t.assert_no_process(w.pid);

    repair(&t, &w);
    t.restore_detached(w.pid, &[]);
    t.workload_check(&w, "restore after repairing");
    kill_and_reap(w.pid);
}

fn core_img(t: &Test, w: &Workload) -> std::path::PathBuf {
    t.images().join(format!("core-{}.img", w.pid))
}

fn backup(path: &Path) {
    fs::copy(path, path.with_extension("orig")).expect("backup image");
}

fn put_back(path: &Path) {
    fs::rename(path.with_extension("orig"), path).expect("restore image backup");
}

#[test]
fn corrupt_core_image() {
    refused_then_repaired(
        "corrupt_core_image",
        |t, w| {
            let core = core_img(t, w);
            backup(&core);
            let mut bytes = fs::read(&core).expect("read core image");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            fs::write(&core, bytes).expect("write core image");
            vec![format!("core-{}.img", w.pid), "checksum mismatch".into()]
        },
        |t, w| put_back(&core_img(t, w)),
    );
}

#[test]
fn truncated_core_image() {
    refused_then_repaired(
        "truncated_core_image",
        |t, w| {
            let core = core_img(t, w);
            backup(&core);
            let len = fs::metadata(&core).expect("stat core image").len();
            fs::OpenOptions::new()
                .write(true)
                .open(&core)
                .and_then(|f| f.set_len(len / 2))
                .expect("truncate");
            vec![format!("core-{}.img", w.pid), "truncated".into()]
        },
        |t, w| put_back(&core_img(t, w)),
    );
}

/// The workload's data files hold byte `i % 251` at offset `i`.
fn recreate(path: &Path, len: usize) {
    fs::write(path, (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).expect("recreate file");
}

#[test]
fn restore_with_open_file_removed() {
    refused_then_repaired(
        "open_file_removed",
        |_, w| {
            let input = w.dir.join("input.dat");
            fs::remove_file(&input).expect("rm input.dat");
            vec![
                input.display().to_string(),
                "No such file or directory".into(),
            ]
        },
        |_, w| recreate(&w.dir.join("input.dat"), 4096),
    );
}

#[test]
fn restore_with_mapped_file_removed() {
    refused_then_repaired(
        "mapped_file_removed",
        |_, w| {
            let mapped = w.dir.join("mapped.dat");
            fs::remove_file(&mapped).expect("rm mapped.dat");
            vec![
                mapped.display().to_string(),
                "No such file or directory".into(),
            ]
        },
        |_, w| recreate(&w.dir.join("mapped.dat"), 64 * 1024),
    );
}

#[test]
fn restore_with_open_file_resized() {
    refused_then_repaired(
        "open_file_resized",
        |_, w| {
            let input = w.dir.join("input.dat");
            use std::io::Write as _;
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&input)
                .expect("open input.dat");
            f.write_all(b"more").expect("append");
            vec![
                input.display().to_string(),
                "changed size since dump".into(),
            ]
        },
        |_, w| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(w.dir.join("input.dat"))
                .expect("open");
            f.set_len(4096).expect("truncate back");
        },
    );
}

/// A dump that cannot write its images must leave the process as it was.
fn refused_dump(name: &str, wrapper: &[&str], images: impl FnOnce(&Test) -> std::path::PathBuf) {
    let Some(t) = Test::new(name) else { return };
    let w = t.start_workload();
    let dir = images(&t);
    let pid = w.pid.to_string();
    let child = t.spawn_criu_wrapped(wrapper, &["dump", "-t", &pid, "-D", dir.to_str().unwrap()]);
    let run = t.wait_criu(child, CRIU_TIMEOUT);
    t.check_err(&run, &[]);
    if run.stderr.trim().is_empty() {
        t.fail("the refused dump printed no error line");
    }
    t.assert_workload_unharmed(&w, "after the refused dump");
    kill_and_reap(w.pid);
}

#[test]
fn dump_to_missing_directory() {
    refused_dump("dump_missing_dir", &[], |t| t.root().join("does-not-exist"));
}

#[test]
fn dump_to_a_regular_file() {
    refused_dump("dump_to_file", &[], |t| {
        let f = t.root().join("not-a-dir");
        fs::write(&f, "").expect("create file");
        f
    });
}

#[test]
fn dump_to_read_only_directory() {
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("dump_to_read_only_directory: skipped: needs setpriv (util-linux)");
        return;
    }
    // Root passes permission checks through CAP_DAC_OVERRIDE, so criu runs
    // without it (and without CAP_DAC_READ_SEARCH) here.
    let drop = "-dac_override,-dac_read_search";
    let inh = format!("--inh-caps={drop}");
    let bnd = format!("--bounding-set={drop}");
    refused_dump("dump_read_only_dir", &["setpriv", &inh, &bnd, "--"], |t| {
        use std::os::unix::fs::PermissionsExt as _;
        let d = t.root().join("read-only");
        fs::create_dir(&d).expect("mkdir");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).expect("chmod");
        d
    });
}
