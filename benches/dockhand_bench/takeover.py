"""Phase f. Takeover.

Two workers of our own (--bin, --concurrency 1) on a queue of their own,
bench-f-<run>, with the default lease (60 s; DOCKHAND__WORKER__LEASE_SECONDS is
dropped from their environment). `sleep 300` is submitted, the worker running it
SIGKILLed, and the time until the job runs again (attempt 2, or on the other
worker) measured by polling the job hash; --lease-trials times, a new worker
replacing the killed one between trials. After each trial the job is cancelled
(`dockhand cancel`) and the killed worker's orphaned container removed by its
dockhand.job label.
"""

import sys
import time

from .harness import TERMINAL_STATUSES, Fatal, dist, hget_str, run_quiet, secs


def remove_job_containers(job_id):
    """Removes the containers labelled dockhand.job=<job_id>; returns how many there were."""
    ids = run_quiet(["docker", "ps", "-a", "-q", "--filter", f"label=dockhand.job={job_id}"]) or ""
    for cid in ids.split():
        run_quiet(["docker", "rm", "-f", cid], timeout=60)
    return len(ids.split())


def run(bench):
    a = bench.args
    queue = f"bench-f-{bench.run_tag}"
    stream = bench.stream_key(queue)
    res = {"trials_asked": a.lease_trials, "queue": queue, "trials": []}
    # The default lease (whatever the bench's own environment says is dropped),
    # unless --lease-seconds names one (--smoke: a short one, to be quick).
    drop = ("DOCKHAND__WORKER__LEASE_SECONDS",)
    extra = {"DOCKHAND__WORKER__LEASE_SECONDS": str(a.lease_seconds)} if a.lease_seconds else {}
    workers = {}
    k = 0

    def new_worker():
        nonlocal k
        k += 1
        wid = f"bench-f-{bench.run_tag}-{k}"
        p, log = bench.spawn_worker(queue, wid, 1, env_extra=extra, env_drop=drop)
        workers[wid] = (p, log)
        return wid

    new_worker()
    new_worker()
    if not bench.wait_consumers(stream, 0, [p for p, _ in workers.values()]):
        raise Fatal("f: the workers made no consumer group within 30 s")
    # Give both a moment to be reading, so that either may take the job.
    time.sleep(3.0)
    try:
        for t in range(a.lease_trials):
            jid = f"bench-{bench.run_tag}-lease-{t}"
            bench.submit({"id": jid, "image": a.image, "command": ["sleep", "300"],
                          "limits": {"timeout_seconds": 600}}, stream)
            h, _ = bench.poll_status(jid, ("running",), 60, 0.05, queue=queue)
            owner = hget_str(h, "worker") or ""
            victim = next((w for w in workers if w in owner), None)
            if hget_str(h, "status") != "running" or victim is None:
                bench.failures.append(f"f: trial {t}: job not running on a bench worker ({hget_str(h, 'status')}, worker {owner!r})")
                break
            p, _ = workers.pop(victim)
            time.sleep(1.0)  # let it settle in its lease loop
            t_kill = time.time()
            p.kill()
            p.wait(timeout=10)
            bench.spawned.remove(p)
            deadline = time.monotonic() + a.lease_timeout
            took = None
            while time.monotonic() < deadline:
                h = bench.r.hgetall(bench.job_key(jid, queue))
                try:
                    att = int(hget_str(h, "attempt") or "0")
                except ValueError:
                    att = 0
                st = hget_str(h, "status")
                if st == "running" and (att >= 2 or victim not in (hget_str(h, "worker") or "")):
                    took = time.time()
                    break
                if st in TERMINAL_STATUSES:
                    break
                time.sleep(0.1)
            trial = {
                "job": jid, "killed_worker": victim, "seconds": (took - t_kill) if took else None,
                "attempt": hget_str(h, "attempt"), "status": hget_str(h, "status"),
                "reason": hget_str(h, "reason"), "new_worker": hget_str(h, "worker"),
                "started_at_after": hget_str(h, "started_at"),
            }
            res["trials"].append(trial)
            if a.progress:
                print(f"    f: trial {t + 1}/{a.lease_trials}: {secs(trial['seconds'])} (attempt {trial['attempt']})",
                      file=sys.stderr)
            if took is None:
                bench.failures.append(f"f: trial {t}: the job did not run elsewhere within {a.lease_timeout:.0f} s"
                                     f" (status {trial['status']}, attempt {trial['attempt']})")
            # End the job, then the orphaned container of the killed worker.
            bench.dockhand_cli("cancel", jid)
            bench.poll_status(jid, TERMINAL_STATUSES, 60, 0.2, queue=queue)
            trial["containers_removed"] = remove_job_containers(jid)
            if took is None:
                break
            if t + 1 < a.lease_trials:
                new_worker()
                time.sleep(2.0)
    finally:
        for wid, (p, _) in list(workers.items()):
            bench.stop_worker(p)
        res["worker_logs"] = [log for _, log in workers.values()]
    seconds = [x["seconds"] for x in res["trials"] if x["seconds"] is not None]
    res["trials_done"] = len(res["trials"])
    res["takeover"] = dist(seconds)
    return res


def summary(out):
    f = out.get("f")
    if not f:
        return []
    L = [""]
    L.append("f. Takeover after SIGKILL of the worker running `sleep 300` (default lease 60 s)")
    for i, t in enumerate(f["trials"]):
        L.append(f"  trial {i + 1}: kill -> running elsewhere  {secs(t['seconds'])}  (attempt {t['attempt']}, status {t['status']},"
                 f" containers removed after {t.get('containers_removed')})")
    tk = f.get("takeover") or {}
    L.append(f"  median over {tk.get('n', 0)} of {f['trials_asked']} asked   {secs(tk.get('median'))}")
    return L
