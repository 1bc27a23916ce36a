//! `criu-bench` in a tiny configuration (8 MiB, one round, images on
//! /dev/shm, two small shapes): it must exit 0 and print both tables. No
//! time is checked.

use criu_tests::*;
use std::process::Command;

#[test]
fn bench_runs_and_prints_the_tables() {
    if !is_root("bench_smoke") {
        return;
    }
    let bin_dir = bins().criu.parent().expect("criu has a directory");
    let out = Command::new(env!("CARGO_BIN_EXE_criu-bench"))
        .args(["--sizes", "8", "--rounds", "1", "--dirs", "/dev/shm"])
        .args(["--shapes", "vmas=20,fds=20"])
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .expect("run criu-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "criu-bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for needle in [
        "dump/dd", "rst/dd", "/dev/shm", "vmas=20", "fds=20", "peak RSS",
    ] {
        assert!(
            stdout.contains(needle),
            "criu-bench output lacks {needle:?}:\n{stdout}\n{stderr}"
        );
    }
}
