#!/usr/bin/env python3
"""WAIT's own cost: a write then `WAIT 1 1000` on one connection, against a master
with one replica on loopback (both started here, no persistence), 2,000 times;
written alone and with WAIT, twice each, interleaved.

    python3 benches/wait_latency.py
"""

import redis, subprocess, socket, tempfile, time, statistics, sys
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
d = tempfile.mkdtemp(); m, r = free(), free()
procs = [subprocess.Popen(["redis-server", "--port", str(m), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d, "--repl-diskless-sync-delay", "0"], stdout=subprocess.DEVNULL)]
time.sleep(0.3)
procs.append(subprocess.Popen(["redis-server", "--port", str(r), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d + "/..", "--replicaof", "127.0.0.1", str(m)], stdout=subprocess.DEVNULL))
c = redis.Redis(port=m)
for _ in range(100):
    if (c.info("replication").get("slave0") or {}).get("state") == "online": break
    time.sleep(0.1)
try:
    for label, wait in (("write only", False), ("write + WAIT 1 1000", True), ("write only", False), ("write + WAIT 1 1000", True)):
        xs = []
        for i in range(2000):
            t = time.perf_counter(); c.hset("k", "f", i)
            if wait: assert c.execute_command("WAIT", 1, 1000) == 1
            xs.append(time.perf_counter() - t)
        print(f"{label}: median {statistics.median(xs)*1e6:.0f} µs, p90 {sorted(xs)[int(len(xs)*0.9)]*1e6:.0f} µs (n={len(xs)})")
finally:
    for p in procs: p.kill()
