# Target for tests/tests/mapped_files.rs and setuid.rs: memfds and deleted
# files mapped into a python3 process (and a child forked from it).
#
#   python3 mapped_files.py WORKDIR MODE
#
# MODE memfd: five memfds (see below) and a child that inherits two of
#   their mappings; deleted: a data file mapped shared and private with its
#   descriptor open, a second one mapped with its descriptor closed, and a
#   copied shared library loaded with dlopen, all unlinked; big: a 2 MiB
#   deleted file mapped (over the default --ghost-limit); user: the memfd
#   mapped shared with its descriptor open (setuid mode); closed: a memfd
#   mapped with its descriptor closed (setuid mode refuses it).
#
# Writes WORKDIR/layout ("NAME ADDR LEN FD" lines, FD -1 when closed) and
# WORKDIR/ready once set up (the child's pid in WORKDIR/child); when
# WORKDIR/go appears it checks everything from inside and writes one
# "NAME ok|FAIL DETAIL" line per check to WORKDIR/result.
import ctypes, fcntl, mmap, os, shutil, sys, time

w, mode = sys.argv[1], sys.argv[2]
P = 4096
RW = mmap.PROT_READ | mmap.PROT_WRITE
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
layout = []
res = []


def mp(name, fd, length, prot, flags):
    # libc mmap: python's mmap module would keep a duplicate descriptor.
    a = libc.mmap(None, length, prot, flags, fd, 0)
    if a is None or a == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "mmap " + name)
    layout.append(f"{name} {a} {length} {fd}")
    return a


def put(a, off, b):
    ctypes.memmove(a + off, b, len(b))


def get(a, off, n):
    return ctypes.string_at(a + off, n)


def check(name, ok, detail=""):
    res.append(f"{name} {'ok' if ok else 'FAIL'} {detail}")


def write_file(name, text):
    with open(os.path.join(w, name + ".tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(w, name + ".tmp"), os.path.join(w, name))


FUTURE_WRITE = 0x10
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
child = 0

if mode in ("memfd", "user"):
    # Shared, its descriptor kept open.
    fd1 = os.memfd_create("criu-shared", 0)
    os.ftruncate(fd1, 2 * P)
    m1 = mp("shared", fd1, 2 * P, RW, mmap.MAP_SHARED)
    put(m1, 0, b"shared-before")
if mode in ("memfd", "closed"):
    # Shared, its descriptor closed after mmap.
    fd2 = os.memfd_create("criu-closed", 0)
    os.ftruncate(fd2, 3 * P)
    m2 = mp("closed", fd2, 3 * P, RW, mmap.MAP_SHARED)
    layout[-1] = layout[-1].rsplit(" ", 1)[0] + " -1"
    put(m2, 2 * P, b"closed-before")
    os.close(fd2)
if mode == "memfd":
    # Sealed against writes, growing and shrinking, mapped read-only.
    fd3 = os.memfd_create("criu-sealed", os.MFD_ALLOW_SEALING)
    os.write(fd3, b"sealed-data")
    os.ftruncate(fd3, P + 100)
    fcntl.fcntl(fd3, fcntl.F_ADD_SEALS, SEALS)
    m3 = mp("sealed", fd3, 2 * P, mmap.PROT_READ, mmap.MAP_SHARED)
    # Private: page 0 written through the mapping, page 1 only read.
    fd4 = os.memfd_create("criu-private", 0)
    os.pwrite(fd4, b"file-page0", 0)
    os.pwrite(fd4, b"file-page1", P)
    m4 = mp("private", fd4, 2 * P, RW, mmap.MAP_PRIVATE)
    put(m4, 0, b"private-page0")
    get(m4, P, 10)
    # Sealed with F_SEAL_FUTURE_WRITE after a shared writable mapping was
    # made: the mapping stays writable, the descriptor cannot write.
    fd5 = os.memfd_create("criu-future", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd5, P)
    m5 = mp("future", fd5, P, RW, mmap.MAP_SHARED)
    put(m5, 0, b"future-before")
    fcntl.fcntl(fd5, fcntl.F_ADD_SEALS, FUTURE_WRITE | fcntl.F_SEAL_SEAL)
    # The child echoes m2[0:16] to m2[16:32] and counts in m1 page 1,
    # through the mappings it inherited.
    child = os.fork()
    if child == 0:
        n = 0
        while True:
            n += 1
            put(m2, 16, get(m2, 0, 16))
            put(m1, P, b"%016d" % n)
            time.sleep(0.02)
    write_file("child", str(child))

if mode == "deleted":
    pattern = bytes((i * 7) % 251 for i in range(3 * P))
    data = os.path.join(w, "data.bin")
    with open(data, "wb") as f:
        f.write(pattern)
    fdd = os.open(data, os.O_RDWR)
    md = mp("data-shared", fdd, 3 * P, RW, mmap.MAP_SHARED)
    mpv = mp("data-private", fdd, 3 * P, RW, mmap.MAP_PRIVATE)
    put(mpv, P, b"private-dirty")
    ro = os.path.join(w, "ro.bin")
    with open(ro, "wb") as f:
        f.write(pattern[: 2 * P])
    fr = os.open(ro, os.O_RDONLY)
    mro = mp("ro", fr, 2 * P, mmap.PROT_READ, mmap.MAP_PRIVATE)
    os.close(fr)
    so = os.path.join(w, "libcopy.so")
    for lib in ("/usr/lib/x86_64-linux-gnu/libdl.so.2", "/lib64/libdl.so.2",
                "/usr/lib/x86_64-linux-gnu/libutil.so.1"):
        if os.path.exists(lib):
            shutil.copy(lib, so)
            break
    ctypes.CDLL(so)
    for p in (data, ro, so):
        os.unlink(p)
    # As after an upgrade: a new file at the old path.
    with open(ro, "wb") as f:
        f.write(b"new version")

if mode == "big":
    big = os.path.join(w, "big.bin")
    with open(big, "wb") as f:
        f.write(b"x" * (2 << 20))
    fb = os.open(big, os.O_RDONLY)
    mb = mp("big", fb, 2 << 20, mmap.PROT_READ, mmap.MAP_PRIVATE)
    get(mb, 0, 1)
    os.close(fb)
    os.unlink(big)

write_file("layout", "\n".join(layout) + "\n")
write_file("ready", "")
while not os.path.exists(os.path.join(w, "go")):
    time.sleep(0.05)

if mode in ("memfd", "user"):
    check("shared-kept", get(m1, 0, 13) == b"shared-before", repr(get(m1, 0, 13)))
    put(m1, 100, b"written-after")
    got = os.pread(fd1, 13, 100)
    check("shared-map-to-fd", got == b"written-after", repr(got))
    os.pwrite(fd1, b"fd-to-map", 200)
    check("shared-fd-to-map", get(m1, 200, 9) == b"fd-to-map", repr(get(m1, 200, 9)))
    check("shared-size", os.fstat(fd1).st_size == 2 * P, str(os.fstat(fd1).st_size))
if mode == "memfd":
    check("closed-kept", get(m2, 2 * P, 13) == b"closed-before", repr(get(m2, 2 * P, 13)))
    token = os.urandom(8).hex().encode()
    put(m2, 0, token)
    deadline = time.time() + 10
    while get(m2, 16, 16) != token and time.time() < deadline:
        time.sleep(0.02)
    check("fork-shared", get(m2, 16, 16) == token, repr(get(m2, 16, 16)))
    a = os.pread(fd1, 16, P)
    time.sleep(0.2)
    b = os.pread(fd1, 16, P)
    check("child-writes-reach-fd", a != b and b.isdigit(), f"{a!r} {b!r}")
    seals = fcntl.fcntl(fd3, fcntl.F_GET_SEALS)
    check("sealed-seals", seals == SEALS, hex(seals))
    check("sealed-size", os.fstat(fd3).st_size == P + 100, str(os.fstat(fd3).st_size))
    check("sealed-contents", get(m3, 0, 11) == b"sealed-data", repr(get(m3, 0, 11)))
    try:
        os.pwrite(fd3, b"x", 0)
        check("sealed-write-refused", False, "pwrite worked")
    except PermissionError:
        check("sealed-write-refused", True)
    seals = fcntl.fcntl(fd5, fcntl.F_GET_SEALS)
    check("future-seals", seals == FUTURE_WRITE | fcntl.F_SEAL_SEAL, hex(seals))
    put(m5, 20, b"mapping-still-writes")
    check("future-map-to-fd", os.pread(fd5, 20, 20) == b"mapping-still-writes",
          repr(os.pread(fd5, 20, 20)))
    check("future-kept", os.pread(fd5, 13, 0) == b"future-before", repr(os.pread(fd5, 13, 0)))
    try:
        os.pwrite(fd5, b"x", 0)
        check("future-write-refused", False, "pwrite worked")
    except PermissionError:
        check("future-write-refused", True)
    check("private-page0", get(m4, 0, 13) == b"private-page0", repr(get(m4, 0, 13)))
    check("private-file0", os.pread(fd4, 10, 0) == b"file-page0", repr(os.pread(fd4, 10, 0)))
    os.pwrite(fd4, b"fdwrite-p1", P)
    check("private-untouched-page-is-file", get(m4, P, 10) == b"fdwrite-p1", repr(get(m4, P, 10)))
if mode == "deleted":
    check("data-shared-kept", get(md, 0, 3 * P) == pattern, "")
    put(md, 2 * P, b"after-restore")
    got = os.pread(fdd, 13, 2 * P)
    check("data-shared-map-to-fd", got == b"after-restore", repr(got))
    check("data-private-dirty", get(mpv, P, 13) == b"private-dirty", repr(get(mpv, P, 13)))
    check("data-private-clean", get(mpv, 0, P) == pattern[:P], "")
    check("data-unlinked", os.fstat(fdd).st_nlink == 0, str(os.fstat(fdd).st_nlink))
    check("ro-kept", get(mro, 0, 2 * P) == pattern[: 2 * P], "")
write_file("result", "\n".join(res) + "\n")
while True:
    time.sleep(1)
