#!/usr/bin/env python3
"""Helpers for the failover cluster lab (lab.sh). Every loop is bounded in time.

  echo NAME PORT SECONDS          UDP echo server: replies "NAME seq" to each datagram
  probe DST PORT FLOWS MS SECONDS client: FLOWS sockets (distinct source ports) each send
                                  every MS ms; prints per-flow max gap and who answered
  routewait NS PREFIX VIA GONE|BACK TIMEOUT [CMD...]
                                  runs CMD (if any), then polls `ip -n NS route show PREFIX`
                                  every 5 ms until VIA is gone (or back); prints ms since CMD
  tunhold NAME SECONDS [HBFILE]   creates a non-persistent tun NAME and holds it (the
                                  "daemon"); with HBFILE, touches it every 100 ms
  watchdog PID HBFILE STALE_MS SECONDS IFACE
                                  kills PID (SIGKILL) and sets IFACE down when HBFILE is
                                  older than STALE_MS
  keywait NS ENDPOINTS KEY TIMEOUT     waits until KEY is gone (etcdctl get), prints ms
"""
import fcntl, json, os, select, signal, socket, struct, subprocess, sys, time


def now():
    return time.monotonic()


def echo(name, port, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    end = now() + float(seconds)
    while now() < end:
        r, _, _ = select.select([s], [], [], 0.5)
        if r:
            data, addr = s.recvfrom(2048)
            try:
                s.sendto(name.encode() + b" " + data, addr)
            except OSError:
                pass  # no route back (link down): keep serving


def probe(dst, port, flows, ms, seconds):
    flows, ms, seconds = int(flows), float(ms) / 1000.0, float(seconds)
    socks = []
    for i in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 40000 + i))
        s.setblocking(False)
        socks.append(s)
    last = [None] * flows      # time of last reply
    maxgap = [0.0] * flows
    gapat = [None] * flows
    who = [dict() for _ in range(flows)]
    sent = [0] * flows
    got = [0] * flows
    start = now()
    end = start + seconds
    nxt = start
    seq = 0
    while now() < end:
        t = now()
        if t >= nxt:
            for i, s in enumerate(socks):
                try:
                    s.sendto(str(seq).encode(), (dst, int(port)))
                    sent[i] += 1
                except OSError:
                    pass
            seq += 1
            nxt += ms
        r, _, _ = select.select(socks, [], [], max(0.0, min(nxt - now(), 0.005)))
        for s in r:
            i = socks.index(s)
            while True:
                try:
                    data, _ = s.recvfrom(2048)
                except BlockingIOError:
                    break
                t = now()
                node = data.split()[0].decode()
                who[i][node] = who[i].get(node, 0) + 1
                got[i] += 1
                if last[i] is not None and t - last[i] > maxgap[i]:
                    maxgap[i] = t - last[i]
                    gapat[i] = round(last[i] - start, 3)
                last[i] = t
    t = now()
    for i in range(flows):  # a flow that never recovered: the gap runs to the end
        tail = t - (last[i] if last[i] is not None else start)
        if tail > maxgap[i] + 0.05:
            maxgap[i] = tail
            gapat[i] = round((last[i] or start) - start, 3)
    out = []
    for i in range(flows):
        out.append({"flow": i, "sport": 40000 + i, "sent": sent[i], "got": got[i],
                    "max_gap_ms": round(maxgap[i] * 1000, 1), "gap_start_s": gapat[i],
                    "nodes": who[i]})
    print(json.dumps(out))


def route_has(ns, prefix, via):
    r = subprocess.run(["ip", "-n", ns, "route", "show"] + prefix.split(), capture_output=True, text=True)
    return via in r.stdout, r.stdout


def routewait(ns, prefix, via, mode, timeout, cmd):
    want_present = mode.upper() == "BACK"
    t0 = time.time()
    m0 = now()
    if cmd:
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the injection
    deadline = m0 + float(timeout)
    polls = 0
    while now() < deadline:
        has, out = route_has(ns, prefix, via)
        polls += 1
        if has == want_present:
            dt = (now() - m0) * 1000
            print(json.dumps({"ms": round(dt, 1), "polls": polls, "t0": t0,
                              "route": out.strip().replace("\n", " | ")}))
            return
        time.sleep(0.005)
    has, out = route_has(ns, prefix, via)
    print(json.dumps({"ms": None, "timeout_s": float(timeout), "polls": polls,
                      "route": out.strip().replace("\n", " | ")}))


TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def tunhold(name, seconds, hbfile=None):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    end = now() + float(seconds)
    while now() < end:
        if hbfile:
            with open(hbfile, "w") as f:
                f.write(str(time.time()))
        time.sleep(0.1)


def watchdog(pid, hbfile, stale_ms, seconds, iface):
    pid, stale = int(pid), float(stale_ms) / 1000.0
    end = now() + float(seconds)
    while now() < end:
        try:
            age = time.time() - os.stat(hbfile).st_mtime
        except FileNotFoundError:
            age = 0.0
        if age > stale:
            subprocess.run(["ip", "link", "set", iface, "down"])  # withdraw first
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            print(json.dumps({"watchdog": "fired", "age_ms": round(age * 1000)}), flush=True)
            return
        time.sleep(0.02)


def keywait(ns, endpoints, key, timeout):
    m0 = now()
    while now() < m0 + float(timeout):
        r = subprocess.run(["ip", "netns", "exec", ns, "etcdctl", "--endpoints", endpoints,
                            "--command-timeout=300ms", "get", key, "--print-value-only"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == "":
            print(json.dumps({"gone_ms": round((now() - m0) * 1000)}))
            return
        time.sleep(0.02)
    print(json.dumps({"gone_ms": None}))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "echo":
        echo(*a[1:4])
    elif a[0] == "probe":
        probe(*a[1:6])
    elif a[0] == "routewait":
        routewait(a[1], a[2], a[3], a[4], a[5], a[6:])
    elif a[0] == "tunhold":
        tunhold(*a[1:4])
    elif a[0] == "watchdog":
        watchdog(*a[1:6])
    elif a[0] == "keywait":
        keywait(*a[1:5])
    else:
        sys.exit(__doc__)
