//! `criu show`: print a checkpoint (`-D DIR`) or one image file (`-f FILE`)
//! for people, or as JSON for scripts (`--json`, shape in docs/SHOW.md).
//!
//! Every file goes through the same checked readers as restore
//! ([`crate::images::format`]), so a truncated, corrupt or foreign file is
//! an error naming the file and the byte offset, never a panic. Show does
//! not apply restore's cross-file rules: it prints what is there.

#![forbid(unsafe_code)]

pub mod view;

use crate::cli::ShowArgs;
use crate::error::{Error, Result};
use crate::images::format::{decode_image, HEADER_LEN};
use crate::images::types::{
    CoreEntry, FdEntry, FileEntry, FsEntry, Inventory, MmEntry, PagemapEntry, PagemapRecord,
    PagesFile, PstreeEntry,
};
use crate::images::{read_image, read_single, ImageDir, ImageError, Kind};
use serde::Serialize;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use view::{Checkpoint, Contents, HexLine, ProcessImages};

/// Run `criu show`.
///
/// Errors: an unreadable, truncated, corrupt or foreign image, naming it.
pub fn run(a: &ShowArgs) -> Result<u8> {
    let out = match (&a.file, &a.images_dir) {
        (Some(f), dir) => {
            let path = match dir {
                Some(d) if f.is_relative() => d.join(f),
                _ => f.clone(),
            };
            show_file(&path, a)?
        }
        (None, Some(d)) => show_dir(d, a)?,
        (None, None) => {
            return Err(Error::Refused(
                "criu show needs -D DIR or -f FILE".to_string(),
            ))
        }
    };
    print!("{out}");
    Ok(0)
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Our view types are plain data: serialising them cannot fail.
    let mut s =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------
// The whole checkpoint

/// Read the pagemap of a process: the head's pages files and the runs.
fn read_pagemap(path: &Path) -> Result<(Vec<PagesFile>, Vec<PagemapEntry>)> {
    let recs: Vec<PagemapRecord> = read_image(path, Kind::Pagemap)?;
    let mut it = recs.into_iter();
    let Some(PagemapRecord::Head(head)) = it.next() else {
        return Err(ImageError::invalid(path, "the first record is not the pagemap head").into());
    };
    let mut runs = Vec::new();
    for r in it {
        match r {
            PagemapRecord::Run(e) => runs.push(e),
            PagemapRecord::Head(_) => {
                return Err(ImageError::invalid(path, "a second pagemap head").into())
            }
        }
    }
    Ok((head.files, runs))
}

/// Read every image of a checkpoint into views.
///
/// Errors: the first image that cannot be read, naming it.
pub fn load(dir: &Path, contents: Option<u64>) -> Result<Checkpoint> {
    let d = ImageDir::new(dir);
    let inv: Inventory = read_single(&d.inventory(), Kind::Inventory)?;
    let tree: Vec<PstreeEntry> = read_image(&d.pstree(), Kind::Pstree)?;
    let table: Vec<FileEntry> = read_image(&d.file_table(), Kind::FileTable)?;
    let mut processes = Vec::new();
    let mut zombies = Vec::new();
    let mut order = Vec::new();
    for t in tree {
        let pid = t.pid;
        order.push(pid);
        if let Some(status) = t.zombie {
            // A zombie has no image but its pstree entry.
            zombies.push(view::zombie(&t, status));
            continue;
        }
        let tids = if t.threads.is_empty() {
            vec![pid]
        } else {
            t.threads.clone()
        };
        let mut thread_cores = Vec::with_capacity(tids.len());
        for &tid in &tids {
            thread_cores.push(read_single::<CoreEntry>(&d.core(tid), Kind::Core)?);
        }
        let core = match tids.iter().position(|&x| x == pid) {
            Some(i) => thread_cores[i].clone(),
            None => read_single::<CoreEntry>(&d.core(pid), Kind::Core)?,
        };
        let (pages_files, runs) = read_pagemap(&d.pagemap(pid))?;
        let pages_bytes = pages_files.iter().map(|f| f.bytes).sum();
        let p = ProcessImages {
            core,
            thread_cores,
            mm: read_single::<MmEntry>(&d.mm(pid), Kind::Mm)?,
            fs: read_single::<FsEntry>(&d.fs(pid), Kind::Fs)?,
            files: read_image::<FdEntry>(&d.files(pid), Kind::Files)?,
            tree: t,
            pages_bytes,
            runs,
        };
        let mut v = view::process(&p, &table);
        if let Some(max) = contents {
            let mut paths = Vec::with_capacity(pages_files.len());
            for f in &pages_files {
                let name = Path::new(&f.name)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.is_empty() || name != f.name {
                    return Err(ImageError::invalid(
                        &d.pagemap(pid),
                        format!("pages file name {:?} is not a plain file name", f.name),
                    )
                    .into());
                }
                paths.push(d.file(&name));
            }
            v.contents = Some(hexdump_pages(&paths, &p.runs, max)?);
        }
        processes.push(v);
    }
    Ok(Checkpoint {
        show_format: view::SHOW_FORMAT,
        dir: dir.display().to_string(),
        inventory: view::inventory(&inv),
        processes,
        zombies,
        order,
    })
}

fn show_dir(dir: &Path, a: &ShowArgs) -> Result<String> {
    let c = load(dir, a.contents.then_some(a.max_bytes))?;
    if a.json {
        return Ok(to_json(&c));
    }
    Ok(render(&c))
}

fn yes(b: bool, s: &str) -> &str {
    if b {
        s
    } else {
        ""
    }
}

/// The human-readable overview.
pub fn render(c: &Checkpoint) -> String {
    let mut o = String::new();
    let i = &c.inventory;
    let _ = writeln!(o, "Checkpoint {}", c.dir);
    let _ = writeln!(
        o,
        "  format {}, written by criu {} on Linux {} ({}), root pid {}, dumped at {} (unix time){}",
        i.format_version,
        i.tool_version,
        i.kernel,
        i.arch,
        i.root_pid,
        i.dumped_at,
        if i.options.is_empty() {
            String::new()
        } else {
            format!(", options: {}", i.options.join(" "))
        }
    );
    let _ = writeln!(o, "\nProcess tree:");
    let _ = writeln!(
        o,
        "  {:>8} {:>8} {:>8} {:>8} {:>7}  {:<8} COMMAND",
        "PID", "PPID", "PGID", "SID", "THREADS", "STATE"
    );
    for &pid in &c.order {
        let row = if let Some(p) = c.processes.iter().find(|p| p.pid == pid) {
            (
                p.ppid,
                p.pgid,
                p.sid,
                p.threads.len(),
                p.state,
                p.comm.clone(),
            )
        } else if let Some(z) = c.zombies.iter().find(|z| z.pid == pid) {
            (z.ppid, z.pgid, z.sid, 0, z.state, zombie_text(z))
        } else {
            continue;
        };
        let _ = writeln!(
            o,
            "  {:>8} {:>8} {:>8} {:>8} {:>7}  {:<8} {}",
            pid, row.0, row.1, row.2, row.3, row.4, row.5
        );
    }
    for p in &c.processes {
        let _ = writeln!(o, "\n== pid {} ({}) ==", p.pid, p.comm);
        let _ = writeln!(o, "  exe {}", p.exe);
        if !p.shares_with_parent.is_empty() {
            let _ = writeln!(
                o,
                "  shares with its parent: {}",
                p.shares_with_parent.join(" ")
            );
        }
        let _ = writeln!(o, "  cwd {}  root {}  umask {}", p.cwd, p.root, p.umask);
        let cr = &p.creds;
        let _ = writeln!(
            o,
            "  uid {:?} gid {:?} groups {:?}\n  caps inh {} prm {} eff {} bnd {} amb {}  securebits {:#x}{}",
            cr.uids,
            cr.gids,
            cr.groups,
            cr.cap_inh,
            cr.cap_prm,
            cr.cap_eff,
            cr.cap_bnd,
            cr.cap_amb,
            cr.securebits,
            yes(cr.no_new_privs, "  no_new_privs")
        );

        let _ = writeln!(
            o,
            "\n  Memory ({} mappings, {} bytes stored):",
            p.memory.len(),
            p.pages_bytes
        );
        for v in &p.memory {
            let what = match (&v.path, v.shmid, v.backing) {
                (Some(path), _, _) => format!("{path} @{:#x}", v.offset),
                (None, Some(id), b) => format!("{b} shmid {id} @{:#x} {}", v.offset, v.name),
                (None, None, b) if v.name.is_empty() => b.to_string(),
                (None, None, b) => format!("{b} {}", v.name),
            };
            let _ = writeln!(
                o,
                "    {:012x}-{:012x} {} {:>10}  {:<40} {}",
                v.start,
                v.end,
                v.prot,
                human(v.end - v.start),
                what,
                if v.bytes_stored > 0 {
                    format!("stored {}", human(v.bytes_stored))
                } else {
                    String::new()
                }
            );
        }

        let _ = writeln!(o, "\n  Files:");
        for f in &p.files {
            let _ = writeln!(
                o,
                "    {:>4}  #{:<4} {:<9} {}{}{}{}",
                f.fd,
                f.file,
                f.kind,
                f.target,
                if f.flags.is_empty() {
                    String::new()
                } else {
                    format!("  {}", f.flags)
                },
                f.offset.map(|x| format!("  pos {x}")).unwrap_or_default(),
                yes(f.cloexec, "  cloexec")
            );
        }

        let s = &p.signals;
        let _ = writeln!(o, "\n  Signals:");
        let _ = writeln!(o, "    blocked: {}", sig_list(&s.blocked));
        if !s.pending.is_empty() {
            let names: Vec<String> = s
                .pending
                .iter()
                .map(|x| format!("{}{}", x.name, if x.shared { " (shared)" } else { "" }))
                .collect();
            let _ = writeln!(o, "    pending: {}", names.join(", "));
        }
        for a in &s.actions {
            let _ = writeln!(
                o,
                "    {:<12} handler {}  flags {}  mask {}",
                a.name,
                a.handler,
                if a.flags.is_empty() {
                    "-".to_string()
                } else {
                    a.flags.join("|")
                },
                sig_list(&a.mask)
            );
        }
        if let Some(st) = &s.altstack {
            let _ = writeln!(
                o,
                "    altstack {:#x} size {} flags {:#x}",
                st.sp, st.size, st.flags
            );
        }

        let _ = writeln!(o, "\n  Threads ({}):", p.thread_states.len());
        for th in &p.thread_states {
            render_thread(&mut o, th);
        }

        let t = &p.timers;
        let _ = writeln!(o, "\n  Timers:");
        if t.itimers.is_empty() && t.posix.is_empty() {
            let _ = writeln!(o, "    none");
        }
        for it in &t.itimers {
            let _ = writeln!(
                o,
                "    itimer {:<8} interval {} us, next in {} us",
                it.which, it.interval_us, it.value_us
            );
        }
        for pt in &t.posix {
            let _ = writeln!(
                o,
                "    posix timer {} {} notify {} {}  interval {} ns, next in {} ns",
                pt.id, pt.clock, pt.notify, pt.signal, pt.interval_ns, pt.value_ns
            );
        }

        if let Some(c) = &p.contents {
            let _ = writeln!(o, "\n  Pages:");
            render_hex(&mut o, c);
        }
    }
    o
}

/// What a zombie's wait status says, for the COMMAND column.
fn zombie_text(z: &view::ZombieView) -> String {
    match (z.exit_code, &z.signal) {
        (Some(code), _) => format!("<defunct, exit code {code}>"),
        (None, Some(sig)) => format!(
            "<defunct, killed by {sig}{}>",
            yes(z.core_dumped, ", core dumped")
        ),
        (None, None) => format!("<defunct, status {:#x}>", z.status),
    }
}

fn render_thread(o: &mut String, th: &view::ThreadView) {
    let r = &th.regs;
    let _ = writeln!(
        o,
        "    tid {} ({}){}  rip {}  rsp {}  fs_base {}",
        th.tid,
        th.comm,
        yes(th.leader, " leader"),
        r.rip,
        r.rsp,
        r.fs_base
    );
    let _ = writeln!(o, "      blocked: {}", sig_list(&th.blocked));
    if !th.pending.is_empty() {
        let names: Vec<&str> = th.pending.iter().map(|x| x.name.as_str()).collect();
        let _ = writeln!(o, "      pending: {}", names.join(", "));
    }
    if let Some(st) = &th.altstack {
        let _ = writeln!(
            o,
            "      altstack {:#x} size {} flags {:#x}",
            st.sp, st.size, st.flags
        );
    }
    let mut misc = Vec::new();
    if let Some(rs) = &th.rseq {
        misc.push(format!("rseq {:#x} len {} sig {}", rs.ptr, rs.len, rs.sig));
    }
    if let Some(rl) = &th.robust_list {
        misc.push(format!("robust_list {:#x} len {}", rl.head, rl.len));
    }
    if th.clear_child_tid != 0 {
        misc.push(format!("clear_child_tid {:#x}", th.clear_child_tid));
    }
    if th.pdeath_sig != 0 {
        misc.push(format!(
            "pdeath_sig {}",
            view::signal_name(i64::from(th.pdeath_sig))
        ));
    }
    if !misc.is_empty() {
        let _ = writeln!(o, "      {}", misc.join("  "));
    }
}

fn sig_list(sigs: &[u32]) -> String {
    if sigs.is_empty() {
        return "none".into();
    }
    if sigs.len() >= 62 {
        return "all".into();
    }
    sigs.iter()
        .map(|&s| view::signal_name(i64::from(s)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn human(n: u64) -> String {
    if n >= 1 << 20 && n & ((1 << 20) - 1) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n & ((1 << 10) - 1) == 0 {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

fn render_hex(o: &mut String, c: &Contents) {
    for l in &c.lines {
        let _ = writeln!(o, "    {:012x}  {:<47}  |{}|", l.addr, l.hex, l.ascii);
    }
    if c.truncated {
        let _ = writeln!(o, "    ... (more stored; raise --max-bytes to see it)");
    }
}

// ---------------------------------------------------------------------------
// Page contents

fn hex_line(addr: u64, bytes: &[u8]) -> HexLine {
    HexLine {
        addr,
        hex: bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
        ascii: bytes
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect(),
    }
}

/// Hex-dump up to `max` bytes of the pages of `runs` (in address order),
/// each read from its pages file (`pages`, indexed by the run's `file`) at
/// its offset; each line gets the virtual address the pagemap gives it.
///
/// Errors: a pages file cannot be read, is shorter than its runs, or is not
/// in `pages`.
pub fn hexdump_pages(pages: &[PathBuf], runs: &[PagemapEntry], max: u64) -> Result<Contents> {
    let mut files = Vec::with_capacity(pages.len());
    for p in pages {
        let f = File::open(p).map_err(|source| ImageError::Io {
            path: p.clone(),
            op: "open",
            source,
        })?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        files.push((f, size));
    }
    let mut lines = Vec::new();
    let mut shown = 0u64;
    let mut truncated = false;
    for r in runs {
        let len = r.nr_pages.saturating_mul(4096);
        if shown >= max {
            truncated = truncated || len > 0;
            break;
        }
        let (Some((f, size)), Some(pages)) =
            (files.get_mut(r.file as usize), pages.get(r.file as usize))
        else {
            return Err(ImageError::invalid(
                pages.first().map_or(Path::new("pages"), |p| p.as_path()),
                format!(
                    "the run at {:#x} is in pages file {}, not named",
                    r.vaddr, r.file
                ),
            )
            .into());
        };
        let size = *size;
        let offset = r.offset;
        let want = len.min(max - shown);
        if offset.saturating_add(want) > size {
            return Err(ImageError::Truncated {
                path: pages.to_path_buf(),
                offset: size,
                what: "pages of the run at the pagemap's address",
            }
            .into());
        }
        let mut buf = vec![0u8; want as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|source| ImageError::Io {
                path: pages.to_path_buf(),
                op: "read",
                source,
            })?;
        for (i, chunk) in buf.chunks(16).enumerate() {
            lines.push(hex_line(r.vaddr + 16 * i as u64, chunk));
        }
        shown += want;
        truncated = truncated || want < len;
    }
    Ok(Contents { lines, truncated })
}

/// Hex-dump up to `max` bytes of any file, addresses being file offsets.
fn hexdump_raw(path: &Path, max: u64) -> Result<Contents> {
    let f = File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        op: "open",
        source,
    })?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    f.take(max)
        .read_to_end(&mut buf)
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
    let lines = buf
        .chunks(16)
        .enumerate()
        .map(|(i, c)| hex_line(16 * i as u64, c))
        .collect();
    Ok(Contents {
        lines,
        truncated: size > buf.len() as u64,
    })
}

// ---------------------------------------------------------------------------
// One file

/// `criu show -f FILE --json`.
#[derive(Serialize, Debug)]
pub struct FileView {
    /// Always [`view::SHOW_FORMAT`].
    pub show_format: u32,
    /// The file as given.
    pub file: String,
    /// `inventory`, `pstree`, `core`, `mm`, `fs`, `files`, `pagemap` or
    /// `pages`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Format version from the header (null for raw pages).
    pub format_version: Option<u32>,
    /// Every record, field by field (as in images/types.rs; byte arrays as
    /// hex text). Empty for raw pages.
    pub records: Vec<serde_json::Value>,
    /// With `-c` on a pages file: its contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<Contents>,
}

/// `memfd-INO.img`: the raw contents of a memfd (see
/// [`crate::fdkind::memfd`]).
fn is_memfd_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("memfd-"))
        .and_then(|n| n.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_pages_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img"))
}

fn records<T: Serialize + serde::de::DeserializeOwned>(
    path: &Path,
    kind: Kind,
    data: &[u8],
    contents: Option<u64>,
) -> Result<Vec<serde_json::Value>> {
    let recs: Vec<T> = decode_image(path, kind, data)?;
    Ok(recs
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
            bytes_to_hex(&mut v, contents);
            v
        })
        .collect())
}

/// Fields holding small binary values (XSAVE area, siginfo, a file
/// handle, termios control characters): always hex text.
const BINARY_KEYS: &[&str] = &["xstate", "siginfo", "handle", "cc"];
/// Fields holding names as bytes (UNIX socket paths and abstract names, the
/// directory a socket was bound in): text, non-UTF-8 and control bytes
/// escaped.
const TEXT_KEYS: &[&str] = &["Path", "Abstract", "bind_dir"];
/// Fields holding queued data (pipe and socket queues, TCP send and
/// receive queues, terminal input and output): shown as hex text only with
/// `-c` (at most its byte limit), otherwise as their length.
const PAYLOAD_KEYS: &[&str] = &["data", "sndq", "rcvq", "input", "output"];

/// The bytes of a JSON array of integers 0..=255, `None` for anything else.
fn json_bytes(a: &[serde_json::Value]) -> Option<Vec<u8>> {
    a.iter()
        .map(|b| b.as_u64().and_then(|x| u8::try_from(x).ok()))
        .collect()
}

/// Replace the raw byte arrays by hex text ([`BINARY_KEYS`]), and queued
/// data ([`PAYLOAD_KEYS`]) by hex text up to `contents` bytes (`-c`) or by
/// its length.
fn bytes_to_hex(v: &mut serde_json::Value, contents: Option<u64>) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let (binary, payload) = (
                    BINARY_KEYS.contains(&k.as_str()),
                    PAYLOAD_KEYS.contains(&k.as_str()),
                );
                if TEXT_KEYS.contains(&k.as_str()) {
                    if let Some(b) = x.as_array().and_then(|a| json_bytes(a)) {
                        *x = Value::String(b.escape_ascii().to_string());
                        continue;
                    }
                }
                if binary || payload {
                    if let Some(b) = x.as_array().and_then(|a| json_bytes(a)) {
                        let hex =
                            |b: &[u8]| b.iter().map(|c| format!("{c:02x}")).collect::<String>();
                        *x = Value::String(match (payload, contents) {
                            (false, _) => hex(&b),
                            (true, None) => format!("{} bytes (-c shows them)", b.len()),
                            (true, Some(max)) if (b.len() as u64) <= max => hex(&b),
                            (true, Some(max)) => format!(
                                "{}... ({} bytes, first {max} shown)",
                                hex(&b[..max as usize]),
                                b.len()
                            ),
                        });
                        continue;
                    }
                }
                bytes_to_hex(x, contents);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| bytes_to_hex(x, contents)),
        _ => {}
    }
}

/// Decode one file into a [`FileView`].
///
/// Errors: unreadable, truncated, corrupt, or not an image.
pub fn decode_file(path: &Path, contents: Option<u64>) -> Result<FileView> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            op: "open",
            source,
        })?;
    let size = data.len() as u64;
    let kind = data.get(..8).and_then(Kind::from_magic);
    let Some(kind) = kind else {
        if is_pages_name(path) {
            return Ok(FileView {
                show_format: view::SHOW_FORMAT,
                file: path.display().to_string(),
                kind: "pages".into(),
                size,
                format_version: None,
                records: Vec::new(),
                contents: match contents {
                    Some(max) => Some(pages_contents(path, max)?),
                    None => None,
                },
            });
        }
        if is_memfd_name(path) {
            return Ok(FileView {
                show_format: view::SHOW_FORMAT,
                file: path.display().to_string(),
                kind: "memfd contents".into(),
                size,
                format_version: None,
                records: Vec::new(),
                contents: match contents {
                    Some(max) => Some(hexdump_raw(path, max)?),
                    None => None,
                },
            });
        }
        if data.len() < 8 && b"CRIURS".starts_with(&data[..data.len().min(6)]) {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                offset: size,
                what: "file header",
            }
            .into());
        }
        return Err(ImageError::invalid(
            path,
            "not a criu image: unknown magic at offset 0 (and not a pages-*.img file)",
        )
        .into());
    };
    let records = match kind {
        Kind::Inventory => records::<Inventory>(path, kind, &data, contents)?,
        Kind::Pstree => records::<PstreeEntry>(path, kind, &data, contents)?,
        Kind::Core => records::<CoreEntry>(path, kind, &data, contents)?,
        Kind::Mm => records::<MmEntry>(path, kind, &data, contents)?,
        Kind::Fs => records::<FsEntry>(path, kind, &data, contents)?,
        Kind::Files => records::<FdEntry>(path, kind, &data, contents)?,
        Kind::Pagemap => records::<PagemapRecord>(path, kind, &data, contents)?,
        Kind::FileTable => records::<FileEntry>(path, kind, &data, contents)?,
    };
    let version = data
        .get(8..HEADER_LEN)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    Ok(FileView {
        show_format: view::SHOW_FORMAT,
        file: path.display().to_string(),
        kind: kind.name().into(),
        size,
        format_version: version,
        records,
        contents: None,
    })
}

/// Contents of a pages file: with virtual addresses when the matching
/// `pagemap-PID.img` lies beside it and reads cleanly, else file offsets.
fn pages_contents(path: &Path, max: u64) -> Result<Contents> {
    // `pages-PID.img` is file 0 of `pagemap-PID.img`, `pages-PID.K.img`
    // file K.
    let which: Option<(&str, u32)> = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("pages-"))
        .and_then(|n| n.strip_suffix(".img"))
        .and_then(|rest| match rest.split_once('.') {
            None => Some((rest, 0)),
            Some((pid, k)) => k.parse().ok().map(|k| (pid, k)),
        });
    if let Some((pid, k)) = which {
        let pm = path.with_file_name(format!("pagemap-{pid}.img"));
        if let Ok((_, runs)) = read_pagemap(&pm) {
            let mine: Vec<PagemapEntry> = runs
                .into_iter()
                .filter(|r| r.file == k)
                .map(|r| PagemapEntry { file: 0, ..r })
                .collect();
            return hexdump_pages(&[path.to_path_buf()], &mine, max);
        }
    }
    hexdump_raw(path, max)
}

fn show_file(path: &Path, a: &ShowArgs) -> Result<String> {
    let v = decode_file(path, a.contents.then_some(a.max_bytes))?;
    if a.json {
        return Ok(to_json(&v));
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}: {} image, {} bytes{}",
        v.file,
        v.kind,
        v.size,
        v.format_version
            .map(|x| format!(", format version {x}, {} record(s)", v.records.len()))
            .unwrap_or_else(|| " of raw page data".to_string())
    );
    for (i, r) in v.records.iter().enumerate() {
        let _ = writeln!(o, "record {i}:");
        render_value(&mut o, r, "", 1);
    }
    if let Some(c) = &v.contents {
        render_hex(&mut o, c);
    }
    Ok(o)
}

/// Keys whose integers are addresses or masks, printed in hex.
fn hex_key(k: &str) -> bool {
    const KEYS: &[&str] = &[
        "start",
        "end",
        "vaddr",
        "handler",
        "restorer",
        "mask",
        "sigmask",
        "sp",
        "ptr",
        "start_code",
        "end_code",
        "start_data",
        "end_data",
        "start_brk",
        "brk",
        "start_stack",
        "arg_start",
        "arg_end",
        "env_start",
        "env_end",
        "clear_child_tid",
        "robust_list",
        "cap_inh",
        "cap_prm",
        "cap_eff",
        "cap_bnd",
        "cap_amb",
        "flags",
        "prot",
        "pgoff",
        "sigval",
        "rip",
        "rsp",
        "rbp",
        "fs_base",
        "gs_base",
        "auxv",
    ];
    KEYS.contains(&k)
}

fn scalar(v: &serde_json::Value, hex: bool) -> String {
    use serde_json::Value;
    match v {
        Value::Number(n) if hex => n
            .as_u64()
            .map(|x| format!("{x:#x}"))
            .unwrap_or_else(|| n.to_string()),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Print a JSON value as indented `key: value` lines.
fn render_value(o: &mut String, v: &serde_json::Value, key: &str, depth: usize) {
    use serde_json::Value;
    let pad = "  ".repeat(depth);
    let label = if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    };
    let hex = hex_key(key);
    match v {
        Value::Object(m) if m.is_empty() => {
            let _ = writeln!(o, "{pad}{label}{{}}");
        }
        Value::Object(m) => {
            if !key.is_empty() {
                let _ = writeln!(o, "{pad}{key}:");
            }
            let inner = if key.is_empty() { depth } else { depth + 1 };
            for (k, x) in m {
                render_value(o, x, k, inner);
            }
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            let items: Vec<String> = a.iter().map(|x| scalar(x, hex)).collect();
            let _ = writeln!(o, "{pad}{label}[{}]", items.join(", "));
        }
        Value::Array(a) => {
            let _ = writeln!(o, "{pad}{label}{} item(s)", a.len());
            for (i, x) in a.iter().enumerate() {
                let _ = writeln!(o, "{pad}  - [{i}]");
                render_value(o, x, "", depth + 2);
            }
        }
        other => {
            let _ = writeln!(o, "{pad}{label}{}", scalar(other, hex));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::write_image;

    #[test]
    fn hexdump_lines_get_virtual_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pages-1.img");
        let mut data = vec![0u8; 8192];
        data[0..5].copy_from_slice(b"hello");
        data[4096] = 0xff;
        std::fs::write(&p, &data).unwrap();
        let runs = [
            PagemapEntry {
                vaddr: 0x10000,
                nr_pages: 1,
                file: 0,
                offset: 0,
            },
            PagemapEntry {
                vaddr: 0x40000,
                nr_pages: 1,
                file: 0,
                offset: 4096,
            },
        ];
        let p = [p];
        let c = hexdump_pages(&p, &runs, 8192).unwrap();
        assert_eq!(c.lines.len(), 512);
        assert_eq!(c.lines[0].addr, 0x10000);
        assert!(c.lines[0].ascii.starts_with("hello"));
        assert_eq!(c.lines[256].addr, 0x40000);
        assert!(c.lines[256].hex.starts_with("ff 00"));
        assert!(!c.truncated);
        let c = hexdump_pages(&p, &runs, 32).unwrap();
        assert_eq!(c.lines.len(), 2);
        assert!(c.truncated);
        let short = [PagemapEntry {
            vaddr: 0,
            nr_pages: 3,
            file: 0,
            offset: 0,
        }];
        let e = hexdump_pages(&p, &short, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("pages-1.img") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn files_are_recognised_by_magic_and_errors_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("whatever.img");
        let fs = FsEntry {
            cwd: "/".into(),
            root: "/".into(),
            umask: 0o22,
        };
        write_image(&p, Kind::Fs, &[&fs]).unwrap();
        let v = decode_file(&p, None).unwrap();
        assert_eq!(v.kind, "fs");
        assert_eq!(v.records[0]["umask"], 18);
        let data = std::fs::read(&p).unwrap();
        for cut in [3, 10, data.len() - 1] {
            std::fs::write(&p, &data[..cut]).unwrap();
            let e = decode_file(&p, None).unwrap_err().to_string();
            assert!(e.contains("whatever.img"), "{e}");
            assert!(e.contains("offset"), "cut {cut}: {e}");
        }
        std::fs::write(&p, b"hello world, not an image").unwrap();
        let e = decode_file(&p, None).unwrap_err().to_string();
        assert!(e.contains("not a criu image"), "{e}");
        std::fs::write(&p, b"").unwrap();
        let e = decode_file(&p, None).unwrap_err().to_string();
        assert!(e.contains("truncated at offset 0"), "{e}");
    }
}
