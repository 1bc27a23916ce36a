import os, sys, time, pty, termios, fcntl, struct
s = sys.argv[1]
go = s + ".go"
pid, master = pty.fork()
if pid == 0:
    t = termios.tcgetattr(0)
    t[6][termios.VINTR] = b'\x07'
    termios.tcsetattr(0, termios.TCSANOW, t)
    sys.stdout.write("child ready\n"); sys.stdout.flush()
    open(s + ".child-ready", "w").close()
    while not os.path.exists(go):
        time.sleep(0.05)
    n = 0
    while True:
        line = sys.stdin.readline()
        n += 1
        ws = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
        intr = termios.tcgetattr(0)[6][termios.VINTR]
        rep = "%d|%s|%d|%d|%d|%s|%dx%d|%d\n" % (n, line.strip(), os.getsid(0), os.getpgrp(),
            os.tcgetpgrp(0), os.ttyname(0), ws[1], ws[0], intr[0])
        with open(s + ".child.tmp", "w") as f:
            f.write(rep)
        os.replace(s + ".child.tmp", s + ".child")
        with open(s + ".lines", "a") as f:
            f.write(line.strip() + "\n")
        sys.stdout.write("ECHO " + line.upper()); sys.stdout.flush()
else:
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    os.write(master, b"queued line\npartial")
    while not os.path.exists(s + ".child-ready"):
        time.sleep(0.05)
    with open(s + ".pid.tmp", "w") as f:
        f.write("%d %d\n" % (os.getpid(), pid))
    os.replace(s + ".pid.tmp", s + ".pid")
    while not os.path.exists(go):
        time.sleep(0.05)
    os.write(master, b" end\n")
    os.set_blocking(master, False)
    buf = b""
    k = 0
    while True:
        try:
            buf += os.read(master, 4096)
        except BlockingIOError:
            pass
        with open(s + ".parent.tmp", "wb") as f:
            f.write(buf)
        os.replace(s + ".parent.tmp", s + ".parent")
        k += 1
        os.write(master, b"ping %d\n" % k)
        time.sleep(0.1)
