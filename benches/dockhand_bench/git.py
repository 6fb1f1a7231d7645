"""Phase e. Jobs from git.

A repo in a temp dir (git CLI; Dockerfile FROM --image, COPY hello.txt), given to
the worker as a file:// URL. One job to warm the cache (it builds), then
--git-jobs cached jobs for that commit interleaved with as many image jobs
`cat /etc/hostname` (submit -> terminal event); the ratio of the medians has a
goal of at most 1.1. Then --git-builds new commits built through Dockhand
(submit -> job.started: resolve, checkout, build) interleaved with
`DOCKER_BUILDKIT=0 docker build` of the checkout, each with a commit of its own
so that neither finds the other's layers in the build cache. The images made are
removed by tag afterwards.
"""

import os
import shutil
import subprocess
import tempfile
import time

from .harness import Fatal, dist, fmt_dist, fmt_ratio, hget_str, median, ms, progress, progress_done, run_quiet


def git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    p = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, env=env, timeout=60)
    if p.returncode != 0:
        raise Fatal(f"git {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout.strip()

def commit_hello(repo, text):
    with open(os.path.join(repo, "hello.txt"), "w") as f:
        f.write(text + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", text)
    return git(repo, "rev-parse", "HEAD")

def run(bench):
    a = bench.args
    repo = tempfile.mkdtemp(prefix="dockhand-bench-repo.")
    url = f"file://{repo}"
    made_images = set()
    base_tags = []
    res = {"repo": repo, "cache_jobs": a.git_jobs, "builds": a.git_builds,
           "git_cached_s": [], "image_s": [], "failures": [],
           "dockhand_build_to_running_s": [], "dockhand_build_total_s": [], "docker_build_s": []}
    ps = bench.events_pubsub()
    try:
        git(repo, "init", "-q")
        with open(os.path.join(repo, "Dockerfile"), "w") as f:
            f.write(f'FROM {a.image}\nCOPY hello.txt /hello.txt\nCMD ["cat","/hello.txt"]\n')
        with open(os.path.join(repo, ".dockerignore"), "w") as f:
            f.write(".git\n")
        sha = commit_hello(repo, f"hello from bench {bench.run_tag}")
        res["commit"] = sha

        def git_spec(jid, commit):
            return {"id": jid, "git": {"url": url, "commit": commit}}

        # Warm the cache (this one builds).
        w = bench.run_spec(ps, git_spec(f"bench-{bench.run_tag}-git-warm", sha), a.build_timeout)
        res["warm_s"] = w["total_s"]
        res["warm_status"] = hget_str(w["hash"], "status")
        if hget_str(w["hash"], "image"):
            made_images.add(hget_str(w["hash"], "image"))
        if res["warm_status"] != "completed":
            bench.failures.append(f"e: the warm-up git job ended {res['warm_status']}: {hget_str(w['hash'], 'error')}")
            return res
        # N cached git jobs vs N image jobs, interleaved.
        for i in range(a.git_jobs):
            order = ("git", "image") if i % 2 == 0 else ("image", "git")
            for which in order:
                if which == "git":
                    x = bench.run_spec(ps, git_spec(f"bench-{bench.run_tag}-git-{i}", sha), a.job_timeout)
                    key = "git_cached_s"
                else:
                    x = bench.run_spec(ps, {"id": f"bench-{bench.run_tag}-img-{i}", "image": a.image,
                                           "command": ["cat", "/etc/hostname"]}, a.job_timeout)
                    key = "image_s"
                st = hget_str(x["hash"], "status")
                if x["total_s"] is None or st != "completed":
                    res["failures"].append({"which": which, "i": i, "status": st, "error": hget_str(x["hash"], "error")})
                else:
                    res[key].append(x["total_s"])
                if which == "git" and hget_str(x["hash"], "image"):
                    made_images.add(hget_str(x["hash"], "image"))
            progress(a, f"e: cache {i + 1}/{a.git_jobs}")
        progress_done(a)
        # Logs of one cached job: did it say "is cached"?
        logk = bench.job_key(f"bench-{bench.run_tag}-git-0") + ":log"
        lines = [f.get(b"line", b"").decode(errors="replace") for _, f in bench.r.xrange(logk, count=50)]
        res["cached_job_said_cached"] = any("is cached" in l for l in lines)
        res["cached_job_build_lines"] = sum(1 for _, f in bench.r.xrange(logk, count=500) if f.get(b"stream") == b"build")
        # Builds: a new commit each time; dockhand vs docker build, interleaved.
        # Each build gets a commit of its own (new hello.txt), the docker build
        # too: with the same content, whichever went second would find the
        # other's COPY layer in the engine's build cache.
        for i in range(a.git_builds):
            order = ("dockhand", "docker") if i % 2 == 0 else ("docker", "dockhand")
            for which in order:
                c = commit_hello(repo, f"{which} build {i} of bench {bench.run_tag} at {time.time():.6f}")
                if which == "dockhand":
                    x = bench.run_spec(ps, git_spec(f"bench-{bench.run_tag}-build-{i}", c), a.build_timeout,
                                      want_started=True)
                    st = hget_str(x["hash"], "status")
                    if hget_str(x["hash"], "image"):
                        made_images.add(hget_str(x["hash"], "image"))
                    if x["started_s"] is None or st != "completed":
                        res["failures"].append({"which": "build", "i": i, "status": st,
                                                "error": hget_str(x["hash"], "error")})
                    else:
                        res["dockhand_build_to_running_s"].append(x["started_s"])
                        res["dockhand_build_total_s"].append(x["total_s"])
                else:
                    tag = f"dockhand-bench-e:{bench.run_tag}-{i}"
                    t0 = time.perf_counter()
                    p = subprocess.run(["docker", "build", "--pull=false", "-q", "-t", tag, repo],
                                       capture_output=True, text=True, timeout=a.build_timeout,
                                       env=dict(os.environ, DOCKER_BUILDKIT="0"))
                    dt = time.perf_counter() - t0
                    base_tags.append(tag)
                    if p.returncode != 0:
                        res["failures"].append({"which": "docker build", "i": i, "error": p.stderr.strip()[:300]})
                    else:
                        res["docker_build_s"].append(dt)
            progress(a, f"e: build {i + 1}/{a.git_builds}")
        progress_done(a)
    finally:
        ps.close()
        removed = []
        for img in sorted(made_images) + base_tags:
            if run_quiet(["docker", "rmi", img], timeout=60) is not None:
                removed.append(img)
        res["images_made"] = sorted(made_images) + base_tags
        res["images_removed"] = len(removed)
        shutil.rmtree(repo, ignore_errors=True)
    g, im = median(res["git_cached_s"]), median(res["image_s"])
    res["git_cached"] = dist(res["git_cached_s"])
    res["image"] = dist(res["image_s"])
    res["cache_ratio"] = (g / im) if g and im else None
    db, kb = median(res["dockhand_build_to_running_s"]), median(res["docker_build_s"])
    res["dockhand_build"] = dist(res["dockhand_build_to_running_s"])
    res["dockhand_build_total"] = dist(res["dockhand_build_total_s"])
    res["docker_build"] = dist(res["docker_build_s"])
    res["build_ratio"] = (db / kb) if db and kb else None
    if res["failures"]:
        bench.failures.append(f"e: {len(res['failures'])} job(s)/build(s) failed: {res['failures'][:2]}")
    # A goal of speed, not of correctness: --smoke (one job each, in the suite) does not check it.
    if res["cache_ratio"] is not None and res["cache_ratio"] > 1.1 and not a.smoke:
        bench.failures.append(f"e: cached git job / image job = {res['cache_ratio']:.2f} (goal <= 1.1)")
    return res


def fmt_range(d):
    """A `dist` dict (or {}) as 'median X  (min X, max X, n=N)' in ms."""
    return f"median {ms(d.get('median'))}  (min {ms(d.get('min'))}, max {ms(d.get('max'))}, n={d.get('n', 0)})"


def summary(out):
    e = out.get("e")
    if not e:
        return []
    L = [""]
    L.append("e. Jobs from git (file:// repo, Dockerfile FROM the busybox image + COPY)")
    if e.get("warm_s") is not None:
        L.append(f"  warm-up job (builds)                 {ms(e['warm_s'])}  status {e.get('warm_status')}")
    g, im = e.get("git_cached") or {}, e.get("image") or {}
    L.append(f"  cached git job, submit -> terminal   {fmt_dist(g)}"
             f"; said 'is cached': {e.get('cached_job_said_cached')}, build lines {e.get('cached_job_build_lines')}")
    L.append(f"  image job `cat /etc/hostname`        {fmt_dist(im)}")
    cr = e.get("cache_ratio")
    L.append(f"  ratio cached git / image (medians)   {fmt_ratio(cr)}  (goal <= 1.1)")
    db, kb, dt = e.get("dockhand_build") or {}, e.get("docker_build") or {}, e.get("dockhand_build_total") or {}
    L.append(f"  dockhand build, submit -> running    {fmt_range(db)};"
             f" to terminal {ms(dt.get('median'))}")
    L.append(f"  DOCKER_BUILDKIT=0 docker build       {fmt_range(kb)}")
    br = e.get("build_ratio")
    L.append(f"  ratio dockhand / docker build        {fmt_ratio(br)}")
    L.append(f"  images made / removed                {len(e.get('images_made', []))} / {e.get('images_removed')}")
    return L
