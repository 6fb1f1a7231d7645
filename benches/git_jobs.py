#!/usr/bin/env python3
"""Jobs from git, measured against image jobs and a plain `docker build`.

    benches/git_jobs.py [--jobs 15] [--builds 5] [--bin PATH] [--redis-url URL]

Needs a running Redis (default redis://127.0.0.1:6379/), the Docker engine, git,
redis-py, the image dockhand-busybox:latest and a built `dockhand` binary (default
target/release/dockhand). It starts one worker of its own (concurrency 1, a key
prefix and a cache folder of its own), makes a git repository in a temp folder, and
removes its keys, images and folders at the end. docs/benchmarks.md explains the
figures.

1. Start latency on a cache hit: `--jobs` rounds of an image job, a job on a
   branch whose image is cached, and one on a pinned commit whose image is cached;
   median time from XADD to `job.started` and to `job.completed`, and the ratio
   to the image job.
2. Build: `--builds` new commits, each built through Dockhand (XADD to
   `job.started`: resolve, checkout, build) and as `git clone` + `docker build`
   (classic builder, like Dockhand) of the same commit; medians and their ratio.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid

import redis


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=15)
    ap.add_argument("--builds", type=int, default=5)
    ap.add_argument("--bin", default="target/release/dockhand")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/")
    args = ap.parse_args()

    prefix = "gitbench" + uuid.uuid4().hex[:8]
    r = redis.Redis.from_url(args.redis_url)
    tmp = tempfile.mkdtemp(prefix="dockhand-gitbench-")
    repo = os.path.join(tmp, "repo")
    os.makedirs(repo)

    def git(*a, cwd=repo):
        return subprocess.run(
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@dockhand.invalid",
             "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *a],
            cwd=cwd, check=True, capture_output=True, text=True,
        ).stdout.strip()

    git("init", "-q")
    with open(os.path.join(repo, "Dockerfile"), "w") as f:
        f.write("FROM dockhand-busybox:latest\nCOPY . /app/\n")
    with open(os.path.join(repo, "app.txt"), "w") as f:
        f.write("0\n")
    git("add", ".")
    git("commit", "-qm", "0")

    env = dict(os.environ, DOCKHAND__REDIS__PREFIX=prefix,
               DOCKHAND__WORKER__CACHE_DIR=os.path.join(tmp, "cache"))
    env.pop("REDIS_URL", None)
    log = open(os.path.join(tmp, "worker.log"), "w")
    worker = subprocess.Popen(
        [args.bin, "--redis-url", args.redis_url, "worker", "--queue", "default",
         "--concurrency", "1", "--id", prefix], env=env, stderr=log)

    events = {}
    cv = threading.Condition()

    def listen():
        p = r.pubsub()
        p.subscribe(f"{prefix}:events")
        for m in p.listen():
            if m["type"] != "message":
                continue
            v = json.loads(m["data"])
            with cv:
                events.setdefault(v["data"]["id"], []).append((v["type"], time.monotonic()))
                cv.notify_all()

    threading.Thread(target=listen, daemon=True).start()

    def run(spec):
        jid = uuid.uuid4().hex
        t0 = time.monotonic()
        r.xadd(f"{prefix}:{{default}}:jobs", {"job": json.dumps(dict(spec, id=jid))})
        deadline = t0 + 300
        with cv:
            while not any(t in ("job.completed", "job.aborted") for t, _ in events.get(jid, [])):
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {jid} did not finish")
                cv.wait(1)
        ev = dict(events[jid])
        if "job.completed" not in ev:
            raise SystemExit(f"job {jid}: {r.hgetall(f'{prefix}:{{default}}:job:{jid}')}")
        return ev["job.started"] - t0, ev["job.completed"] - t0

    try:
        time.sleep(1.5)  # the worker's subscriptions and groups
        image = {"image": "dockhand-busybox:latest", "command": ["true"]}
        branch = {"git": {"url": repo, "branch": "main"}, "command": ["true"]}
        pinned = {"git": {"url": repo, "commit": git("rev-parse", "HEAD")}, "command": ["true"]}
        run(branch)  # builds the image once
        rounds = {"image job": [], "git branch, cached": [], "git commit, cached": []}
        for _ in range(args.jobs):
            rounds["image job"].append(run(image))
            rounds["git branch, cached"].append(run(branch))
            rounds["git commit, cached"].append(run(pinned))
        base_s = statistics.median(s for s, _ in rounds["image job"])
        base_c = statistics.median(c for _, c in rounds["image job"])
        print(f"1. start latency, medians of {args.jobs} (ms; ratio to the image job)")
        for name, samples in rounds.items():
            s = statistics.median(x for x, _ in samples)
            c = statistics.median(x for _, x in samples)
            print(f"   {name:<20} XADD->job.started {s * 1000:7.1f} ({s / base_s:.2f})"
                  f"   XADD->job.completed {c * 1000:7.1f} ({c / base_c:.2f})")

        through, plain = [], []
        for i in range(args.builds):
            with open(os.path.join(repo, "app.txt"), "w") as f:
                f.write(f"{i + 1}\n")
            git("commit", "-qam", str(i + 1))
            commit = git("rev-parse", "HEAD")
            started, _ = run({"git": {"url": repo, "commit": commit}, "command": ["true"]})
            through.append(started)
            t0 = time.monotonic()
            checkout = os.path.join(tmp, f"plain{i}")
            subprocess.run(["git", "clone", "-q", repo, checkout], check=True)
            subprocess.run(["git", "checkout", "-q", commit], cwd=checkout, check=True)
            subprocess.run(["docker", "build", "-q", "-t", f"{prefix}-plain:{i}", checkout],
                           check=True, capture_output=True,
                           env=dict(os.environ, DOCKER_BUILDKIT="0"))
            plain.append(time.monotonic() - t0)
        d, p = statistics.median(through), statistics.median(plain)
        print(f"2. build of a new commit, medians of {args.builds}: through Dockhand "
              f"{d * 1000:.0f} ms, git clone + docker build {p * 1000:.0f} ms, ratio {d / p:.2f}")
    finally:
        worker.terminate()
        worker.wait()
        subprocess.run(
            f"docker images -q --filter label=dockhand.repo={repo} | xargs -r docker rmi -f;"
            f" docker images -q '{prefix}-plain' | xargs -r docker rmi -f",
            shell=True, capture_output=True)
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
