# The attack battery of issue 15, run inside `sluice run` by
# TestBoundaryAttacks (as the default unprivileged uid and as --user root).
# Each attack prints "RESULT <name> blocked <detail>" or "RESULT <name>
# ESCAPED <detail>", and is followed by a connect to the forbidden loopback
# listener (argv[1]) that prints "PROBE <name> <outcome>": the kernel fence
# must still refuse it (EPERM) after every attempt.
import ctypes, ctypes.util, errno, os, socket, struct, sys, time

canary = sys.argv[1]
# sluice's pid in the host's PID namespace: the test writes it to the file
# argv[2] once it has found this process's grandparent from outside.
deadline = time.time() + 60
while not os.path.exists(sys.argv[2]) and time.time() < deadline:
    time.sleep(0.05)
sluice_pid = int(open(sys.argv[2]).read())
print("SLUICE-PID-KNOWN", flush=True)
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.syscall.restype = ctypes.c_long


def err():
    e = ctypes.get_errno()
    return errno.errorcode.get(e, str(e))


def probe(name):
    host, port = canary.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        out = "CONNECTED"
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
    print("PROBE", name, out, flush=True)


def result(name, escaped, detail=""):
    print("RESULT", name, "ESCAPED" if escaped else "blocked", detail, flush=True)
    probe(name)


def in_sandbox_cgroup():
    # In the cgroup namespace the sandbox is "/"; outside it would show "/..".
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return ".." not in line
    return False


# 1. Leave the cgroup: our pid into every cgroup.procs we can name.
paths = set()
for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
    for root, dirs, files in os.walk(base):
        if "cgroup.procs" in files:
            paths.add(os.path.join(root, "cgroup.procs"))
for p in ("/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/unified/cgroup.procs", "/sys/fs/cgroup/pids/cgroup.procs",
          "/sys/fs/cgroup/systemd/cgroup.procs", "/sys/fs/cgroup/unified/../cgroup.procs"):
    paths.add(p)
escaped = []
for p in sorted(paths):
    try:
        with open(p, "w") as f:
            f.write(str(os.getpid()))
    except OSError:
        pass
    if not in_sandbox_cgroup():
        escaped.append(p)
result("cgroup-procs", bool(escaped), " ".join(escaped) or "%d paths tried" % len(paths))

# 2. Mount cgroup2, cgroup v1, bpffs, proc; remount / and /sys writable;
# unmount the masks.
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
os.makedirs("/tmp/boundary-mnt-%d" % os.getpid(), exist_ok=True)
tgt = ("/tmp/boundary-mnt-%d" % os.getpid()).encode()
for name, src, fstype, data in (("mount-cgroup2", b"none", b"cgroup2", None), ("mount-cgroup1", b"none", b"cgroup", b"pids"),
                                ("mount-bpffs", b"bpf", b"bpf", None), ("mount-proc", b"proc", b"proc", None)):
    rc = libc.mount(src, tgt, fstype, 0, data)
    result(name, rc == 0, err() if rc else "mounted")
MS_REMOUNT, MS_BIND = 32, 4096
for p in (b"/sys", b"/proc/sys", b"/sys/fs/cgroup"):
    rc = libc.mount(None, p, None, MS_REMOUNT | MS_BIND, None)
    result("remount-rw" + p.decode().replace("/", "-"), rc == 0, err() if rc else "remounted rw")
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
for p in (b"/sys/fs/bpf", b"/var/lib/sluice", b"/proc", b"/etc/ssl/certs/ca-certificates.crt"):
    rc = libc.umount2(p, 2)  # MNT_DETACH
    result("umount" + p.decode().replace("/", "-"), rc == 0, err() if rc else "unmounted")

# 3. bpf(): enumerate programs and links, open them by id, detach.
BPF_PROG_GET_NEXT_ID, BPF_LINK_GET_FD_BY_ID, BPF_LINK_DETACH, BPF_LINK_GET_NEXT_ID = 11, 30, 34, 31
attr = ctypes.create_string_buffer(128)
rc = libc.syscall(321, BPF_PROG_GET_NEXT_ID, attr, 128)
result("bpf-prog-get-next-id", rc == 0, err() if rc else "listed programs")
got = []
for lid in range(1, 200):
    struct.pack_into("I", attr, 0, lid)
    fd = libc.syscall(321, BPF_LINK_GET_FD_BY_ID, attr, 128)
    if fd >= 0:
        got.append(lid)
        struct.pack_into("I", attr, 0, fd)
        libc.syscall(321, BPF_LINK_DETACH, attr, 128)
result("bpf-link-detach", bool(got), "links %s" % got if got else err())
pins = []
for root in ("/sys/fs/bpf",):
    for r, d, f in os.walk(root):
        pins += f
result("bpffs-pins-visible", bool(pins), " ".join(pins[:5]))

# 4. Kill or ptrace sluice and the init; see sluice at all.
for name, pid in (("sluice", sluice_pid), ("init", 1)):
    if pid != 1:
        # sluice's host pid names nothing here (or one of our own
        # processes); the test checks that sluice lives on and exits
        # normally. kill(1, SIGKILL) from inside is ignored by design.
        rc = libc.kill(pid, 9)
        result("kill-" + name, False, err() if rc else "signal went to a sandbox process")
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    rc = libc.ptrace(PTRACE_ATTACH, pid, None, None)
    if rc == 0:
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    result("ptrace-" + name, rc == 0, err() if rc else "attached")
    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    if pidfd >= 0:
        stolen = [fd for fd in range(0, 64) if libc.syscall(438, pidfd, fd, 0) >= 0]  # pidfd_getfd
        result("pidfd-getfd-" + name, bool(stolen), "fds %s" % stolen if stolen else err())
    else:
        result("pidfd-getfd-" + name, False, "pidfd_open " + err())
visible = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            cmd = open("/proc/%s/cmdline" % p, "rb").read()
        except OSError:
            continue
        if b" run " in cmd.replace(b"\0", b" ") and b"sluice" in cmd:
            visible.append(p)
result("see-sluice", bool(visible), " ".join(visible))

# 5. Read other processes' environ and memory (init's; everything else
# visible is ours).
for f in ("/proc/1/environ", "/proc/1/mem", "/proc/%d/environ" % sluice_pid, "/proc/%d/mem" % sluice_pid):
    try:
        with open(f, "rb") as fh:
            data = fh.read(64)
        result("read" + f.replace("/", "-"), True, "%d bytes" % len(data))
    except OSError as e:
        result("read" + f.replace("/", "-"), False, errno.errorcode.get(e.errno, ""))

# 6. Kernel knobs and devices.
for f in ("/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger", "/sys/kernel/mm/transparent_hugepage/enabled"):
    try:
        with open(f, "w") as fh:
            fh.write("x")
        result("write" + f.replace("/", "-"), True, "written")
    except OSError as e:
        result("write" + f.replace("/", "-"), False, errno.errorcode.get(e.errno, ""))
disks = [d for d in os.listdir("/dev") if d.startswith(("sd", "vd", "nvme", "xvd", "loop", "mem", "kmem", "port", "kmsg"))]
result("devices", bool(disks), " ".join(disks))
state = os.listdir("/var/lib/sluice") if os.path.isdir("/var/lib/sluice") else []
result("state-dir", bool(state), " ".join(state))

# 7. Socket families and namespaces.
for name, fam, typ in (("af-packet", 17, socket.SOCK_RAW), ("af-vsock", 40, socket.SOCK_STREAM),
                       ("af-packet-dgram", 17, socket.SOCK_DGRAM), ("af-alg", 38, socket.SOCK_SEQPACKET),
                       ("af-xdp", 44, socket.SOCK_RAW), ("af-inet-raw", 2, socket.SOCK_RAW)):
    try:
        s = socket.socket(fam, typ)
        s.close()
        result("socket-" + name, True, "created")
    except OSError as e:
        result("socket-" + name, False, errno.errorcode.get(e.errno, ""))
CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS = 0x10000000, 0x40000000, 0x20000
for name, fl in (("unshare-user", CLONE_NEWUSER), ("unshare-net", CLONE_NEWNET), ("unshare-mnt", CLONE_NEWNS)):
    rc = libc.unshare(fl)
    result(name, rc == 0, err() if rc else "unshared")
rc = libc.syscall(425, 8, attr)  # io_uring_setup
result("io-uring", rc >= 0, err() if rc < 0 else "ring created")

# 8. Capabilities left.
caps = {}
for line in open("/proc/self/status"):
    if line.startswith(("CapEff", "CapBnd", "CapPrm", "CapAmb", "CapInh")):
        k, v = line.split(":")
        caps[k] = int(v.strip(), 16)
forbidden = {"SYS_ADMIN": 21, "NET_ADMIN": 12, "BPF": 39, "PERFMON": 38, "NET_RAW": 13, "SYS_PTRACE": 19, "SYS_MODULE": 16}
held = ["%s:%s" % (k, n) for k, v in caps.items() for n, b in forbidden.items() if v & (1 << b)]
result("capabilities", bool(held), " ".join(held) or " ".join("%s=%x" % kv for kv in sorted(caps.items())))
nnp = [l for l in open("/proc/self/status") if l.startswith(("NoNewPrivs", "Seccomp:"))]
result("no-new-privs", not any(l.split()[1] == "1" for l in nnp if l.startswith("NoNewPrivs")) or
       not any(l.split()[1] == "2" for l in nnp if l.startswith("Seccomp:")), " ".join(l.strip() for l in nnp))

# 9. Last: every process of our namespace but us and init (nothing else here).
rc = libc.kill(-1, 9)
result("kill-all", False, "kill(-1) " + (err() if rc else "sent"))
print("DONE", flush=True)
