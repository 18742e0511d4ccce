# Sandbox A of TestBoundaryTwoSandboxes: looks for sandbox B (whose host
# pids the test writes to b-pids) and tries to read its environment, take
# its sockets with pidfd_getfd, signal or ptrace it; then makes its own
# request. Prints "SEEN ..." for anything of B it reached.
import ctypes, ctypes.util, errno, http.client, os, sys, time

port, pub, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3][::-1]
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.syscall.restype = ctypes.c_long
deadline = time.time() + 60
while not os.path.exists(os.path.join(pub, "b-pids")) and time.time() < deadline:
    time.sleep(0.05)
bpids = [int(p) for p in open(os.path.join(pub, "b-pids")).read().split()]
print("BPIDS", len(bpids), flush=True)


def cmdline(pid):
    try:
        return open("/proc/%d/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


procs = [int(p) for p in os.listdir("/proc") if p.isdigit()]
print("PROCS", len(procs), flush=True)
for pid in procs:
    if marker in cmdline(pid):
        print("SEEN process", pid, flush=True)
for pid in procs + bpids:
    if pid in (os.getpid(), 1):
        continue
    ours = marker not in cmdline(pid) and os.path.exists("/proc/%d" % pid)
    try:
        env = open("/proc/%d/environ" % pid, "rb").read()
        if not ours:
            print("SEEN environ", pid, flush=True)
    except OSError:
        pass
    pidfd = libc.syscall(434, pid, 0)
    if pidfd >= 0:
        stolen = [fd for fd in range(3, 64) if libc.syscall(438, pidfd, fd, 0) >= 0]
        if stolen and not ours:
            print("SEEN fds", pid, stolen, flush=True)
    if pid in bpids and libc.kill(pid, 0) == 0 and marker in cmdline(pid):
        print("SEEN signal", pid, flush=True)
    print("TRIED", pid, errno.errorcode.get(ctypes.get_errno(), ""), flush=True)
c = http.client.HTTPSConnection("allowed.test", port, timeout=10)
c.request("GET", "/a1")
print("A1", c.getresponse().read().decode().strip(), flush=True)
open(os.path.join(pub, "a-done"), "w").close()
