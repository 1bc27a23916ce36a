//! Replays the committed fuzz corpus (`fuzz/corpus/frame_decode/`) through
//! the frame decoder on stable Rust, so CI exercises what the fuzz target
//! `frame_decode` checks without nightly or libFuzzer.
//!
//! File names say what must happen: `ok-*` decodes as a `Request`, `bad-*`
//! is rejected; any other file (an input found by `cargo fuzz run`) must
//! only not panic. Whatever decodes must survive a round trip unchanged.
//!
//! `SHARED_IPC_WRITE_CORPUS=1 cargo test -p shared-ipc --test fuzz_corpus`
//! rewrites the seed files from [`seeds`].

#![forbid(unsafe_code)]

use shared_ipc::frame::{decode, encode};
use shared_ipc::{
    BatchStep, PageRun, ReleaseMode, Request, Response, UserRegs, HELLO_MAGIC, MAX_FRAME,
    PROTOCOL_VERSION,
};
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decode")
}

/// A frame with an arbitrary payload and a correct length prefix.
fn raw(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// The seed inputs: valid frames of every request, and frames that must be
/// rejected for each reason the decoder has.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ok = |r: Request| encode(&r).expect("encode seed");
    let hello = ok(Request::Hello {
        magic: HELLO_MAGIC,
        version: PROTOCOL_VERSION,
    });
    let mut trailing = hello.clone();
    trailing.push(0);
    let n = (trailing.len() - 4) as u32;
    trailing[..4].copy_from_slice(&n.to_le_bytes());
    let mut bad_prefix = hello.clone();
    bad_prefix[0] = bad_prefix[0].wrapping_add(1);
    vec![
        ("ok-hello", hello.clone()),
        ("ok-seize", ok(Request::Seize { pid: 1234 })),
        (
            "ok-create-stub",
            ok(Request::CreateStub {
                pid: 4321,
                fds: vec![0, 1, 2],
            }),
        ),
        ("ok-get-regs", ok(Request::GetRegs { pid: 7 })),
        (
            "ok-set-regs",
            ok(Request::SetRegs {
                pid: 7,
                regs: UserRegs {
                    rip: 0x401000,
                    rsp: 0x7ffd_0000,
                    ..Default::default()
                },
                xstate: Some(vec![0xab; 64]),
            }),
        ),
        ("ok-get-sigmask", ok(Request::GetSigmask { pid: 7 })),
        (
            "ok-set-sigmask",
            ok(Request::SetSigmask { pid: 7, mask: !0 }),
        ),
        (
            "ok-peek-siginfo",
            ok(Request::PeekSiginfo {
                pid: 7,
                shared: true,
                offset: 0,
                count: 128,
            }),
        ),
        ("ok-get-rseq", ok(Request::GetRseq { pid: 7 })),
        (
            "ok-set-gadget",
            ok(Request::SetGadget {
                pid: 7,
                addr: 0x7fff_f000_0000,
            }),
        ),
        (
            "ok-syscall",
            ok(Request::Syscall {
                pid: 7,
                nr: 9,
                args: [0, 4096, 3, 0x22, u64::MAX, 0],
            }),
        ),
        (
            "ok-read-memory",
            ok(Request::ReadMemory {
                pid: 7,
                addr: 0x400000,
                len: 4096,
            }),
        ),
        (
            "ok-write-memory",
            ok(Request::WriteMemory {
                pid: 7,
                addr: 0x400000,
                data: b"\x0f\x05hello".to_vec(),
            }),
        ),
        (
            "ok-dump-pages",
            ok(Request::DumpPages {
                pid: 7,
                runs: vec![
                    PageRun {
                        addr: 0x400000,
                        len: 0x2000,
                    },
                    PageRun {
                        addr: 0x7ffd_0000,
                        len: 0x1000,
                    },
                ],
            }),
        ),
        (
            "ok-release",
            ok(Request::Release {
                pid: 7,
                how: ReleaseMode::Kill,
            }),
        ),
        ("ok-wait-exit", ok(Request::WaitExit { pid: 7 })),
        (
            "ok-syscall-batch",
            ok(Request::SyscallBatch {
                pid: 7,
                steps: vec![
                    BatchStep::Write {
                        addr: 0x7ffd_0000,
                        data: vec![0x20; 32],
                    },
                    BatchStep::Syscall {
                        nr: 13,
                        args: [2, 0x7ffd_0000, 0, 8, 0, 0],
                    },
                    BatchStep::SetRegs {
                        regs: UserRegs {
                            rip: 0x401000,
                            ..Default::default()
                        },
                        xstate: Some(vec![0xab; 64]),
                    },
                    BatchStep::SetSigmask { mask: 1 << 9 },
                ],
            }),
        ),
        // Well-formed, but more steps than the helper accepts.
        (
            "ok-syscall-batch-too-long",
            ok(Request::SyscallBatch {
                pid: 7,
                steps: vec![
                    BatchStep::Syscall {
                        nr: 39,
                        args: [0; 6]
                    };
                    shared_ipc::MAX_BATCH_STEPS + 1
                ],
            }),
        ),
        // A well-formed frame the helper must still refuse by bounds.
        ("ok-seize-pid-zero", ok(Request::Seize { pid: 0 })),
        ("bad-empty", Vec::new()),
        ("bad-short-prefix", vec![1, 0]),
        ("bad-prefix-mismatch", bad_prefix),
        ("bad-trailing-byte", trailing),
        ("bad-truncated-hello", hello[..hello.len() - 1].to_vec()),
        ("bad-unknown-variant", raw(&[0x7f])),
        (
            "bad-vec-longer-than-frame",
            raw(&[2, 7, 0xff, 0xff, 0x03, 1]),
        ),
        (
            "bad-varint-overflow",
            raw(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ),
        ("bad-huge-prefix", vec![0xff, 0xff, 0xff, 0xff, 0]),
        ("bad-oversized", raw(&vec![0u8; MAX_FRAME])),
    ]
}

/// What the fuzz target asserts for one input.
fn exercise(name: &str, data: &[u8]) -> bool {
    let req = decode::<Request>(data);
    if let Ok(r) = &req {
        let _ = r.check_bounds();
        let again = encode(r).unwrap_or_else(|e| panic!("{name}: re-encode: {e}"));
        assert_eq!(
            decode::<Request>(&again).as_ref(),
            Ok(r),
            "{name}: round trip"
        );
    }
    if let Ok(r) = decode::<Response>(data) {
        let again = encode(&r).unwrap_or_else(|e| panic!("{name}: re-encode: {e}"));
        assert_eq!(decode::<Response>(&again), Ok(r), "{name}: round trip");
    }
    req.is_ok()
}

#[test]
fn corpus_replays() {
    let dir = corpus_dir();
    if std::env::var_os("SHARED_IPC_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds() {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut seen = 0;
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        let decoded = exercise(&name, &data);
        if name.starts_with("ok-") {
            assert!(decoded, "{name} should decode as a Request");
            seen += 1;
        } else if name.starts_with("bad-") {
            assert!(!decoded, "{name} should be rejected");
            seen += 1;
        }
    }
    assert!(
        seen >= seeds().len(),
        "only {seen} seed files in {}",
        dir.display()
    );
}

#[test]
fn committed_seeds_are_current() {
    // A protocol change that alters an encoding must regenerate the seeds.
    for (name, data) in seeds() {
        let path = corpus_dir().join(name);
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk, data,
            "{name} is stale: rerun with SHARED_IPC_WRITE_CORPUS=1"
        );
    }
}
