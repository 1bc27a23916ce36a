//! `--pidfile`, `-o` (relative to `-D`) and `-v` verbosity.

use criu_tests::*;
use std::fs;

#[test]
fn pidfile_and_log_file_inside_images_dir() {
    let Some(t) = Test::new("pidfile_and_log") else {
        return;
    };
    let w = t.start_workload();
    t.dump(w.pid, &[]);
    reap_dumped(&t, w.pid);
    // criu runs with the test's temporary directory as its cwd.
    if t.root().join("dump.log").exists() {
        t.fail("-o dump.log was written in the working directory instead of inside -D");
    }
    let log = t.images().join("dump.log");
    if read(&log).unwrap_or_default().trim().is_empty() {
        t.fail(&format!(
            "-o dump.log -v4 left {} missing or empty",
            log.display()
        ));
    }
    for img in [
        "inventory.img".to_owned(),
        "pstree.img".to_owned(),
        format!("core-{}.img", w.pid),
        format!("mm-{}.img", w.pid),
        format!("fs-{}.img", w.pid),
        format!("files-{}.img", w.pid),
        format!("pagemap-{}.img", w.pid),
        format!("pages-{}.img", w.pid),
    ] {
        if !t.images().join(&img).is_file() {
            t.fail(&format!("the dump wrote no {img}"));
        }
    }

    let pidfile = t.work().join("restored.pid");
    t.restore_detached(w.pid, &["--pidfile", pidfile.to_str().unwrap()]);
    let written = read(&pidfile);
    if written.as_deref().map(str::trim) != Some(w.pid.to_string().as_str()) {
        t.fail(&format!("--pidfile holds {written:?}, expected {}", w.pid));
    }
    if read(&t.images().join("restore.log"))
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        t.fail("-o restore.log -v4 left images/restore.log missing or empty");
    }
    t.workload_check(&w, "after restore");
    kill_and_reap(w.pid);
}

#[test]
fn verbosity_changes_log_detail() {
    let Some(t) = Test::new("verbosity") else {
        return;
    };
    let w = t.start_workload();
    let pid = w.pid.to_string();
    let mut lines = Vec::new();
    for level in ["-v1", "-v4"] {
        let dir = t.root().join(format!("images{level}"));
        fs::create_dir(&dir).expect("mkdir");
        t.criu_ok(&[
            "dump",
            "-t",
            &pid,
            "-D",
            dir.to_str().unwrap(),
            "-R",
            "-o",
            "dump.log",
            level,
        ]);
        let text = read(&dir.join("dump.log")).unwrap_or_default();
        lines.push(text.lines().count());
    }
    if lines[1] <= lines[0] {
        t.fail(&format!(
            "-v4 wrote {} log lines, not more than -v1 ({})",
            lines[1], lines[0]
        ));
    }
    t.assert_running_untouched(w.pid, "after two dumps with -R");
    t.workload_check(&w, "after two dumps with -R");
    kill_and_reap(w.pid);
}
