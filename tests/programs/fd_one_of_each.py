import ctypes, fcntl, os, select, signal, struct, sys, time
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
F_ADD_SEALS, F_GET_SEALS, F_SEAL_SHRINK, F_SEAL_GROW = 1033, 1034, 2, 4
IN_MODIFY, IN_CREATE = 0x2, 0x100

class ts(ctypes.Structure): _fields_ = [("s", ctypes.c_long), ("n", ctypes.c_long)]
class its(ctypes.Structure): _fields_ = [("interval", ts), ("value", ts)]

# A pipe of 128 KiB holding 76800 bytes (more than the default 64 KiB).
r, w = os.pipe()
fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 17)
payload = bytes(range(256)) * 300
os.write(w, payload)
os.set_blocking(r, False)
# A pipe whose read end signals its owner (O_ASYNC, F_SETOWN, F_SETSIG).
ar, aw = os.pipe()
got_io = []
signal.signal(signal.SIGUSR2, lambda s, f: got_io.append(s))
fcntl.fcntl(ar, fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(ar, 10, signal.SIGUSR2)  # F_SETSIG
fcntl.fcntl(ar, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)
# A FIFO with data.
fifo = os.path.join(d, "fifo")
os.mkfifo(fifo)
fr = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
fw = os.open(fifo, os.O_WRONLY)
os.write(fw, b"fifo data")
# eventfds: a semaphore and a big counter.
ev = os.eventfd(5, os.EFD_SEMAPHORE)
ev2 = os.eventfd(0, os.EFD_NONBLOCK)
os.eventfd_write(ev2, 1 << 40)
# signalfd for SIGUSR1 and SIGRTMIN+3, both blocked.
rt = signal.SIGRTMIN + 3
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, rt])
mask = ctypes.c_uint64((1 << (signal.SIGUSR1 - 1)) | (1 << (rt - 1)))
sfd = libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK)
# timerfds: periodic, fired once and unread, and disarmed.
tfd = libc.timerfd_create(1, 0)
libc.timerfd_settime(tfd, 0, ctypes.byref(its(ts(1000, 0), ts(500, 0))), None)
tfired = libc.timerfd_create(1, os.O_NONBLOCK)
libc.timerfd_settime(tfired, 0, ctypes.byref(its(ts(0, 0), ts(0, 1000000))), None)
time.sleep(0.05)
# epoll on the pipe (level) and the semaphore eventfd (edge); checked first,
# while both are readable.
ep = select.epoll()
ep.register(r, select.EPOLLIN)
ep.register(ev, select.EPOLLIN | select.EPOLLET)
# memfd: contents, name, offset, seals.
m = os.memfd_create("fdk test", os.MFD_ALLOW_SEALING)
content = b"memfd-contents " * 1000
os.write(m, content)
os.lseek(m, 123, os.SEEK_SET)
fcntl.fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)
# inotify: a file and a directory; wd 2 was removed so the directory is wd 3.
watched = os.path.join(d, "watched")
open(watched, "w").close()
ino = libc.inotify_init1(os.O_NONBLOCK)
wd1 = libc.inotify_add_watch(ino, watched.encode(), IN_MODIFY)
libc.inotify_rm_watch(ino, libc.inotify_add_watch(ino, b"/", IN_CREATE))
sub = os.path.join(d, "sub")
os.mkdir(sub)
wd3 = libc.inotify_add_watch(ino, sub.encode(), IN_CREATE)
while os.read(ino, 4096) if select.select([ino], [], [], 0)[0] else b"": pass

with open(os.path.join(d, "ready.tmp"), "w") as f:
    f.write(f"{os.getpid()}\n")
os.rename(os.path.join(d, "ready.tmp"), os.path.join(d, "ready"))
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.05)

out = []
def check(name, ok, detail=""):
    out.append(f"{name} {'ok' if ok else 'BAD'} {detail}")
def fdinfo(fd):
    return dict(l.split(":", 1) for l in open(f"/proc/self/fdinfo/{fd}").read().splitlines() if ":" in l)
def attempt(name, f):
    try: f()
    except Exception as e: check(name, False, repr(e))

def epoll():
    got = dict(ep.poll(0))
    check("epoll-ready", got == {r: select.EPOLLIN, ev: select.EPOLLIN}, repr(got))
    lines = [l for l in open(f"/proc/self/fdinfo/{ep.fileno()}").read().splitlines() if l.startswith("tfd:")]
    check("epoll-registered", sorted(int(l.split()[1]) for l in lines) == sorted([r, ev]), repr(lines))
attempt("epoll", epoll)
def pipe():
    got = b""
    while True:
        try: b = os.read(r, 1 << 20)
        except BlockingIOError: break
        if not b: break
        got += b
    check("pipe-data", got == payload, f"{len(got)} bytes")
    check("pipe-size", fcntl.fcntl(w, F_GETPIPE_SZ) == 1 << 17, str(fcntl.fcntl(w, F_GETPIPE_SZ)))
    check("pipe-flags", not os.get_blocking(r) and os.get_blocking(w))
    os.write(w, b"again")
    check("pipe-works", os.read(r, 10) == b"again")
attempt("pipe", pipe)
def async_pipe():
    check("async-owner", fcntl.fcntl(ar, fcntl.F_GETOWN) == os.getpid() and fcntl.fcntl(ar, 11) == signal.SIGUSR2)
    check("async-flags", fcntl.fcntl(ar, fcntl.F_GETFL) & os.O_ASYNC != 0)
    os.write(aw, b"x")
    time.sleep(0.1)
    check("async-signal", len(got_io) > 0, repr(got_io))
attempt("async", async_pipe)
def fifo_():
    check("fifo-data", os.read(fr, 100) == b"fifo data")
    check("fifo-path", os.readlink(f"/proc/self/fd/{fw}") == fifo)
attempt("fifo", fifo_)
def eventfd():
    check("eventfd-semaphore", os.eventfd_read(ev) == 1 and fdinfo(ev)["eventfd-count"].strip() == "4")
    check("eventfd-counter", os.eventfd_read(ev2) == 1 << 40)
    check("eventfd-flags", os.get_blocking(ev) and not os.get_blocking(ev2))
attempt("eventfd", eventfd)
def signalfd():
    check("signalfd-mask", int(fdinfo(sfd)["sigmask"], 16) == mask.value, fdinfo(sfd)["sigmask"])
    os.kill(os.getpid(), signal.SIGUSR1)
    info = os.read(sfd, 128)
    check("signalfd-read", struct.unpack("I", info[:4])[0] == signal.SIGUSR1)
attempt("signalfd", signalfd)
def timerfd():
    cur = its()
    libc.timerfd_gettime(tfd, ctypes.byref(cur))
    check("timerfd-interval", cur.interval.s == 1000 and cur.interval.n == 0, str(cur.interval.s))
    check("timerfd-remaining", 400 < cur.value.s < 500, str(cur.value.s))
    check("timerfd-ticks", struct.unpack("Q", os.read(tfired, 8))[0] == 1)
    libc.timerfd_gettime(tfired, ctypes.byref(cur))
    check("timerfd-disarmed", cur.value.s == 0 and cur.value.n == 0)
attempt("timerfd", timerfd)
def memfd():
    check("memfd-name", os.readlink(f"/proc/self/fd/{m}") == "/memfd:fdk test (deleted)")
    check("memfd-offset", os.lseek(m, 0, os.SEEK_CUR) == 123)
    check("memfd-contents", os.pread(m, 1 << 20, 0) == content)
    check("memfd-seals", fcntl.fcntl(m, F_GET_SEALS) == F_SEAL_SHRINK | F_SEAL_GROW, str(fcntl.fcntl(m, F_GET_SEALS)))
attempt("memfd", memfd)
def inotify():
    with open(watched, "a") as f: f.write("x")
    open(os.path.join(sub, "new"), "w").close()
    time.sleep(0.1)
    buf = os.read(ino, 4096)
    evs = []
    while buf:
        wd, mk, _, ln = struct.unpack("iIII", buf[:16])
        evs.append((wd, mk))
        buf = buf[16 + ln:]
    check("inotify-events", (wd1, IN_MODIFY) in evs and (wd3, IN_CREATE) in evs and wd3 == 3, repr(evs))
attempt("inotify", inotify)
open(os.path.join(d, "result.tmp"), "w").write("\n".join(out) + "\n")
os.rename(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
while True:
    time.sleep(1)
