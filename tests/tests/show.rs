//! `criu show` on images written by a real dump of `criu-workload`: the
//! overview, `--json`, `-f` of every image kind, `-c` page contents, and
//! clear errors (naming the file, non-zero exit, no panic) for corrupt,
//! truncated and foreign files.

use criu_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Dumps a fresh workload with `-R` and returns (test, pid, images dir).
fn dumped(name: &str) -> Option<(Test, i32, PathBuf)> {
    let t = Test::new(name)?;
    let w = t.start_workload();
    t.dump(w.pid, &["-R"]);
    let pid = w.pid;
    kill_and_reap(pid);
    let images = t.images();
    Some((t, pid, images))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn no_panic(t: &Test, run: &CriuRun) {
    if run.stderr.contains("panicked") || run.code() >= 100 {
        t.fail(&format!("criu {} panicked or crashed", run.args.join(" ")));
    }
}

#[test]
fn show_overview_of_a_dump() {
    let Some((t, pid, images)) = dumped("show_overview") else {
        return;
    };
    let out = t.criu_ok(&["show", "-D", s(&images)]).stdout;
    let devnull_42 = out
        .lines()
        .any(|l| l.split_whitespace().next() == Some("42") && l.contains("/dev/null"));
    let checks = [
        ("pid", out.contains(&pid.to_string())),
        ("comm", out.contains("criu-workload")),
        ("mapped.dat mapping", out.contains("mapped.dat")),
        ("fd 42 on /dev/null", devnull_42),
        (
            "SIGUSR1 handler",
            out.lines()
                .any(|l| l.trim_start().starts_with("SIGUSR1") && l.contains("handler 0x")),
        ),
        ("POSIX timer", out.contains("posix timer")),
        ("credentials", out.contains("uid [")),
        (
            "process tree header",
            out.contains("PPID") && out.contains("SID"),
        ),
    ];
    for (what, ok) in checks {
        if !ok {
            t.fail(&format!("criu show lacks the {what}:\n{out}"));
        }
    }
    // Default signal actions are not listed.
    if out.lines().any(|l| l.contains("handler 0x0 ")) {
        t.fail(&format!("criu show lists default signal actions:\n{out}"));
    }
}

#[test]
fn show_json_has_the_documented_shape() {
    let Some((t, pid, images)) = dumped("show_json") else {
        return;
    };
    let out = t.criu_ok(&["show", "-D", s(&images), "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| t.fail(&format!("show --json is not JSON: {e}\n{out}")));
    let p = &v["processes"][0];
    let fail = |what: &str| -> ! { t.fail(&format!("show --json: {what}:\n{out}")) };
    if v["show_format"] != 1 || v["inventory"]["root_pid"] != pid {
        fail("show_format / inventory.root_pid");
    }
    for key in [
        "pid",
        "ppid",
        "pgid",
        "sid",
        "threads",
        "state",
        "comm",
        "exe",
        "cwd",
        "root",
        "umask",
        "creds",
        "memory",
        "pages_bytes",
        "files",
        "signals",
        "timers",
    ] {
        if p.get(key).is_none() {
            fail(&format!("process lacks key {key:?}"));
        }
    }
    if p["pid"] != pid || p["comm"] != "criu-workload" {
        fail("pid / comm");
    }
    let vmas = p["memory"].as_array().cloned().unwrap_or_default();
    let mapped = vmas.iter().find(|m| {
        m["path"]
            .as_str()
            .is_some_and(|x| x.ends_with("/mapped.dat"))
    });
    match mapped {
        Some(m) if m["bytes_stored"].as_u64().unwrap_or(0) > 0 && m["prot"] == "rw-p" => {}
        _ => fail("no rw-p mapped.dat mapping with stored (dirty) pages"),
    }
    for m in &vmas {
        for key in [
            "start",
            "end",
            "prot",
            "backing",
            "path",
            "offset",
            "name",
            "bytes_stored",
        ] {
            if m.get(key).is_none() {
                fail(&format!("mapping lacks key {key:?}"));
            }
        }
    }
    let files = p["files"].as_array().cloned().unwrap_or_default();
    if !files
        .iter()
        .any(|f| f["fd"] == 42 && f["target"] == "/dev/null" && f["kind"] == "device")
    {
        fail("no fd 42 device /dev/null");
    }
    let actions = p["signals"]["actions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !actions
        .iter()
        .any(|a| a["name"] == "SIGUSR1" && a["signo"] == 10)
    {
        fail("no SIGUSR1 action");
    }
    if actions.iter().any(|a| a["handler"] == "0x0") {
        fail("default actions listed");
    }
    let posix = p["timers"]["posix"].as_array().cloned().unwrap_or_default();
    if posix.len() != 1 || posix[0]["interval_ns"] != 100_000_000u64 {
        fail("the workload's POSIX timer (100 ms) is missing");
    }
    if p.get("contents").is_some() {
        fail("contents present without -c");
    }

    // -c adds contents, limited by --max-bytes.
    let out = t
        .criu_ok(&[
            "show",
            "-D",
            s(&images),
            "--json",
            "-c",
            "--max-bytes",
            "256",
        ])
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| fail(&e.to_string()));
    let c = &v["processes"][0]["contents"];
    let lines = c["lines"].as_array().cloned().unwrap_or_default();
    if lines.len() != 16 || c["truncated"] != true {
        fail("-c --max-bytes 256 should give 16 lines and truncated");
    }
    let first = lines[0]["addr"].as_u64().unwrap_or(0);
    let in_a_vma = vmas.iter().any(|m| {
        m["start"].as_u64().unwrap_or(u64::MAX) <= first && first < m["end"].as_u64().unwrap_or(0)
    });
    if !in_a_vma || lines[0]["hex"].as_str().map(|h| h.len()) != Some(47) {
        fail("hex lines must carry a virtual address inside a mapping and 16 bytes");
    }
}

#[test]
fn show_file_decodes_every_image() {
    let Some((t, pid, images)) = dumped("show_file") else {
        return;
    };
    let core = images.join(format!("core-{pid}.img"));
    let out = t.criu_ok(&["show", "-f", s(&core)]).stdout;
    if !out.contains("core image") || !out.contains("criu-workload") || !out.contains("sigactions")
    {
        t.fail(&format!("show -f core: {out}"));
    }
    for e in fs::read_dir(&images).expect("images dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "img") {
            let run = t.criu_ok(&["show", "-f", s(&p), "--json"]);
            let v: serde_json::Value = serde_json::from_str(&run.stdout)
                .unwrap_or_else(|e| t.fail(&format!("show -f {} --json: {e}", p.display())));
            if v["file"].as_str() != Some(s(&p)) || v["kind"].as_str().is_none() {
                t.fail(&format!("show -f {} --json: {}", p.display(), run.stdout));
            }
        }
    }
    // A pages file: its size, and with -c its contents at virtual addresses.
    let pages = images.join(format!("pages-{pid}.img"));
    let size = fs::metadata(&pages).expect("pages file").len();
    let out = t.criu_ok(&["show", "-f", s(&pages)]).stdout;
    if !out.contains(&format!("{size} bytes")) {
        t.fail(&format!("show -f pages should give its size {size}: {out}"));
    }
    let out = t
        .criu_ok(&["show", "-f", s(&pages), "-c", "--max-bytes", "64"])
        .stdout;
    let hex: Vec<&str> = out.lines().filter(|l| l.contains('|')).collect();
    if hex.len() != 4 || !out.contains("more stored") {
        t.fail(&format!(
            "show -f pages -c --max-bytes 64 should print 4 lines: {out}"
        ));
    }
}

#[test]
fn show_refuses_damaged_and_foreign_files() {
    let Some((t, pid, images)) = dumped("show_damaged") else {
        return;
    };
    let bad = t.root().join("bad");
    fs::create_dir(&bad).expect("mkdir");
    for e in fs::read_dir(&images).expect("images dir") {
        let p = e.expect("entry").path();
        fs::copy(&p, bad.join(p.file_name().expect("name"))).expect("copy");
    }
    let core = bad.join(format!("core-{pid}.img"));
    let mm = bad.join(format!("mm-{pid}.img"));
    let original_core = fs::read(&core).expect("core");
    let original_mm = fs::read(&mm).expect("mm");

    // A flipped byte inside the first record's payload: checksum.
    let mut d = original_core.clone();
    d[40] ^= 0x55;
    fs::write(&core, &d).expect("write");
    let run = t.criu_err(
        &["show", "-D", s(&bad)],
        &[&format!("core-{pid}.img"), "offset"],
    );
    no_panic(&t, &run);
    let run = t.criu_err(
        &["show", "-f", s(&core)],
        &[&format!("core-{pid}.img"), "checksum"],
    );
    no_panic(&t, &run);
    fs::write(&core, &original_core).expect("write");

    // Truncated in the middle of a record.
    fs::write(&mm, &original_mm[..original_mm.len() / 2]).expect("write");
    let run = t.criu_err(
        &["show", "-D", s(&bad)],
        &[&format!("mm-{pid}.img"), "truncated at offset"],
    );
    no_panic(&t, &run);
    let run = t.criu_err(
        &["show", "-f", s(&mm), "--json"],
        &[&format!("mm-{pid}.img"), "truncated"],
    );
    no_panic(&t, &run);
    // Truncated inside the header.
    fs::write(&mm, &original_mm[..5]).expect("write");
    let run = t.criu_err(&["show", "-f", s(&mm)], &["mm-", "truncated at offset 5"]);
    no_panic(&t, &run);
    fs::write(&mm, &original_mm).expect("write");

    // A foreign file and a wrong version.
    let foreign = bad.join("notes.txt");
    fs::write(&foreign, "this is not an image at all\n").expect("write");
    let run = t.criu_err(
        &["show", "-f", s(&foreign)],
        &["notes.txt", "not a criu image", "offset 0"],
    );
    no_panic(&t, &run);
    let mut d = original_core.clone();
    d[8] = 7;
    fs::write(&core, &d).expect("write");
    let run = t.criu_err(
        &["show", "-f", s(&core)],
        &[&format!("core-{pid}.img"), "version 7"],
    );
    no_panic(&t, &run);
    fs::write(&core, &original_core).expect("write");

    // A pages file shorter than the pagemap says.
    let pages = bad.join(format!("pages-{pid}.img"));
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .expect("open pages");
    f.set_len(4096).expect("truncate pages");
    let run = t.criu_err(
        &["show", "-D", s(&bad), "-c", "--max-bytes", "100000000"],
        &[&format!("pages-{pid}.img"), "truncated"],
    );
    no_panic(&t, &run);
    // Missing images directory.
    let run = t.criu_err(
        &["show", "-D", s(&t.root().join("nope"))],
        &["inventory.img"],
    );
    no_panic(&t, &run);

    // The intact copy still shows fine.
    f.set_len(
        fs::metadata(images.join(format!("pages-{pid}.img")))
            .expect("pages")
            .len(),
    )
    .expect("restore length");
    t.criu_ok(&["show", "-D", s(&bad)]);
}

/// Every process's `thread_states` lists its `threads`, in order, each with
/// a register summary.
fn check_thread_states(t: &Test, p: &serde_json::Value, out: &str) {
    let threads = p["threads"].as_array().cloned().unwrap_or_default();
    let states = p["thread_states"].as_array().cloned().unwrap_or_default();
    let tids: Vec<&serde_json::Value> = states.iter().map(|s| &s["tid"]).collect();
    if threads.is_empty() || tids != threads.iter().collect::<Vec<_>>() {
        t.fail(&format!(
            "thread_states of pid {} do not match its threads:\n{out}",
            p["pid"]
        ));
    }
    for (i, s) in states.iter().enumerate() {
        let rip = s["regs"]["rip"].as_str().unwrap_or("");
        let ok = rip.starts_with("0x")
            && rip != "0x0"
            && s["regs"]["rsp"]
                .as_str()
                .is_some_and(|x| x.starts_with("0x"))
            && s["comm"].as_str().is_some_and(|c| !c.is_empty())
            && s["blocked"].is_array()
            && s["pending"].is_array()
            && s["clear_child_tid"].is_u64()
            && s.get("altstack").is_some()
            && s.get("rseq").is_some()
            && s.get("robust_list").is_some()
            && s["leader"] == (i == 0 && s["tid"] == p["pid"]);
        if !ok {
            t.fail(&format!("thread state {i} of pid {}: {s}", p["pid"]));
        }
    }
}

#[test]
fn show_tree_with_a_zombie() {
    let Some(t) = Test::new("show_tree") else {
        return;
    };
    let w = t.work();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(TREE_PROGRAM).arg(&w);
    let root = t.spawn_target(&mut cmd).id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        (0..4).all(|l| level_counter(&w, l).is_some_and(|c| c.1 >= 3))
    }) {
        t.fail(&format!("the tree did not start: {}", describe(root)));
    }
    let pids: Vec<i32> = (0..4).map(|l| level_counter(&w, l).unwrap().0).collect();
    for &p in &pids[1..] {
        t.track(p);
    }
    let zombie = fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|&c| proc_state(c) == Some('Z'));
    let Some(zombie) = zombie else {
        t.fail("no zombie child")
    };
    t.dump(root, &["-R"]);
    // Parents first: the orphans (and the zombie) come to us, the subreaper.
    for &p in &pids {
        kill_and_reap(p);
    }
    if let Err(e) = reap(zombie, Duration::from_secs(10)) {
        t.fail(&format!("the zombie {zombie} was not reaped: {e}"));
    }
    let images = t.images();

    let out = t.criu_ok(&["show", "-D", s(&images)]).stdout;
    let row = |pid: i32| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
            .map(str::to_owned)
    };
    for &p in &pids {
        if row(p).is_none() || !out.contains(&format!("== pid {p} (")) {
            t.fail(&format!("criu show lacks process {p}:\n{out}"));
        }
    }
    match row(zombie) {
        Some(l) if l.contains("zombie") && l.contains("exit code 7") => {}
        _ => t.fail(&format!(
            "criu show lacks the zombie {zombie} with exit code 7:\n{out}"
        )),
    }
    if out.contains(&format!("== pid {zombie} ")) {
        t.fail(&format!("criu show has a section for the zombie:\n{out}"));
    }
    for &p in &pids {
        if !out.contains(&format!("tid {p} (")) {
            t.fail(&format!("criu show lacks the thread of {p}:\n{out}"));
        }
    }

    let out = t.criu_ok(&["show", "-D", s(&images), "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| t.fail(&format!("show --json is not JSON: {e}\n{out}")));
    if v["show_format"] != 1 {
        t.fail(&format!("show_format changed:\n{out}"));
    }
    let procs = v["processes"].as_array().cloned().unwrap_or_default();
    let got: Vec<i64> = procs.iter().filter_map(|p| p["pid"].as_i64()).collect();
    if got != pids.iter().map(|&p| i64::from(p)).collect::<Vec<_>>() {
        t.fail(&format!("processes {got:?}, expected {pids:?}:\n{out}"));
    }
    for p in &procs {
        check_thread_states(&t, p, &out);
    }
    let zombies = v["zombies"].as_array().cloned().unwrap_or_default();
    match zombies.as_slice() {
        [z] if z["pid"] == zombie
            && z["ppid"] == root
            && z["state"] == "zombie"
            && z["exit_code"] == 7
            && z["status"] == 7 << 8
            && z["signal"].is_null() => {}
        _ => t.fail(&format!(
            "zombies should be [pid {zombie}, exit code 7]:\n{out}"
        )),
    }
}

fn task_ids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

#[test]
fn show_threads() {
    let Some(t) = Test::new("show_threads") else {
        return;
    };
    const PROGRAM: &str = r#"
import sys, threading, time
def work():
    while True:
        time.sleep(0.01)
for i in range(4):
    threading.Thread(target=work, daemon=True).start()
open(sys.argv[1], "w").write("ready")
while True:
    time.sleep(0.05)
"#;
    let ready = t.work().join("ready");
    let pid = t
        .spawn_target(
            std::process::Command::new("python3")
                .arg("-c")
                .arg(PROGRAM)
                .arg(&ready),
        )
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || {
        ready.exists() && task_ids(pid).len() == 5
    }) {
        t.fail(&format!("python3 threads did not start: {}", describe(pid)));
    }
    let tids = task_ids(pid);
    t.dump(pid, &["-R"]);
    let still = task_ids(pid);
    kill_and_reap(pid);
    if still != tids {
        t.fail(&format!(
            "threads changed during the dump: {tids:?} -> {still:?}"
        ));
    }
    let images = t.images();

    let out = t.criu_ok(&["show", "-D", s(&images)]).stdout;
    let shown: Vec<i32> = out
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("tid "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let mut sorted = shown.clone();
    sorted.sort_unstable();
    if sorted != tids || shown.first() != Some(&pid) || !out.contains("Threads (5)") {
        t.fail(&format!(
            "criu show should list threads {tids:?}, leader first:\n{out}"
        ));
    }
    if !out.lines().any(|l| l.trim_start().starts_with("blocked:")) {
        t.fail(&format!(
            "criu show lacks the per-thread blocked mask:\n{out}"
        ));
    }

    let out = t.criu_ok(&["show", "-D", s(&images), "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| t.fail(&format!("show --json is not JSON: {e}\n{out}")));
    let p = &v["processes"][0];
    let mut threads: Vec<i32> = p["threads"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|x| x.as_i64().map(|x| x as i32))
        .collect();
    if threads.first() != Some(&pid) {
        t.fail(&format!(
            "threads should start with the leader {pid}:\n{out}"
        ));
    }
    threads.sort_unstable();
    if threads != tids {
        t.fail(&format!("threads {threads:?}, /proc says {tids:?}:\n{out}"));
    }
    check_thread_states(&t, p, &out);
    if v["zombies"].as_array().map(Vec::len) != Some(0) {
        t.fail(&format!("zombies should be []:\n{out}"));
    }

    // A non-leader thread's core file decodes on its own.
    let tid = *tids
        .iter()
        .find(|&&x| x != pid)
        .expect("a non-leader thread");
    let core = images.join(format!("core-{tid}.img"));
    let out = t.criu_ok(&["show", "-f", s(&core), "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| t.fail(&format!("show -f --json is not JSON: {e}\n{out}")));
    if v["kind"] != "core" || v["records"][0]["tid"] != tid {
        t.fail(&format!("show -f core-{tid}.img: {out}"));
    }
    let out = t.criu_ok(&["show", "-f", s(&core)]).stdout;
    if !out.contains("core image") || !out.contains(&format!("tid: {tid}")) {
        t.fail(&format!("show -f core-{tid}.img: {out}"));
    }
}

/// Queued data in files.img (a pipe's bytes, a socket's queue) is shown as
/// its length without `-c`, as hex text with `-c` (cut at --max-bytes),
/// and a socket's bound path as text; never as arrays of numbers.
#[test]
fn show_file_table_queued_data_follows_contents_option() {
    let Some(t) = Test::new("show_queues") else {
        return;
    };
    let ready = t.work().join("ready");
    let sock = t.work().join("sock");
    let program = format!(
        "import os, socket, time\n\
         r, w = os.pipe()\n\
         os.write(w, b'HELLO-PIPE')\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.bind({sock:?})\n\
         c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         c.sendto(b'SOCKET-QUEUE-0123456789', {sock:?})\n\
         open({ready:?}, 'w').write('ok')\n\
         while True: time.sleep(1)\n",
        sock = sock.display().to_string(),
        ready = ready.display().to_string(),
    );
    let pid = t
        .spawn_target(std::process::Command::new("python3").args(["-c", &program]))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || ready.exists()) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    t.dump(pid, &["-R"]);
    kill_and_reap(pid);
    let files = t.images().join("files.img");
    let plain = t.criu_ok(&["show", "-f", s(&files)]).stdout;
    let pipe_hex = "48454c4c4f2d50495045"; // HELLO-PIPE
    let checks = [
        (
            "the pipe's length",
            plain.contains("10 bytes (-c shows them)"),
        ),
        (
            "the socket queue's length",
            plain.contains("23 bytes (-c shows them)"),
        ),
        ("no pipe bytes without -c", !plain.contains(pipe_hex)),
        (
            "the bound path as text",
            plain.contains(&sock.display().to_string()),
        ),
    ];
    for (what, ok) in checks {
        if !ok {
            t.fail(&format!("criu show -f files.img lacks {what}:\n{plain}"));
        }
    }
    let with_c = t
        .criu_ok(&["show", "-f", s(&files), "-c", "--max-bytes", "16"])
        .stdout;
    // SOCKET-QUEUE-012 (16 bytes) then the cut.
    let sock_cut = "534f434b45542d51554555452d303132... (23 bytes, first 16 shown)";
    if !with_c.contains(pipe_hex) || !with_c.contains(sock_cut) {
        t.fail(&format!(
            "criu show -f files.img -c lacks the queued bytes:\n{with_c}"
        ));
    }
    let json = t.criu_ok(&["show", "-f", s(&files), "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| t.fail(&format!("show --json: {e}: {json}")));
    fn has_byte_array(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().any(|(k, x)| {
                (matches!(k.as_str(), "data" | "Path") && x.is_array()) || has_byte_array(x)
            }),
            serde_json::Value::Array(a) => a.iter().any(has_byte_array),
            _ => false,
        }
    }
    if has_byte_array(&v) {
        t.fail(&format!("show --json still has byte arrays: {json}"));
    }
}
