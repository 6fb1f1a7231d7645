"""The comparisons' plots (matplotlib, from the bench's virtualenv) and the
generated results section of docs/benchmarks.md.

The section lies between RESULTS_BEGIN and RESULTS_END; a rerun replaces what
is between them and nothing else, so the hand-written explanations around it
stay. Without the markers it is appended at the end, markers included.
"""

import os

from . import containers, queuepath

RESULTS_BEGIN = "<!-- scripts/bench: generated results, begin (a rerun replaces this section) -->"
RESULTS_END = "<!-- scripts/bench: generated results, end -->"


def plots(out, folder):
    """Writes one PNG per comparison run into `folder`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    k = out.get("k")
    if k:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        cs = [row["concurrency"] for row in k["table"]]
        for s in containers.SYSTEMS:
            med = [row[s]["median"] for row in k["table"]]
            lo = [row[s]["median"] - row[s]["min"] for row in k["table"]]
            hi = [row[s]["max"] - row[s]["median"] for row in k["table"]]
            ax.errorbar(cs, med, yerr=[lo, hi], marker="o", capsize=3, label=s)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency")
        ax.set_ylabel("jobs/s (median, min-max)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{k['jobs']} `true` container jobs, {k['reps']} repetitions")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(_save(fig, folder, "bench-containers.png"))
    lp = out.get("l")
    if lp:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = list(lp.get("systems", queuepath.SYSTEMS))
        v = [[x["jobs_per_s"] for x in lp["samples"][s]] for s in names]
        med = [lp["median_jobs_per_s"][s] for s in names]
        ax.bar(names, med, yerr=[[m - min(x) for m, x in zip(med, v)], [max(x) - m for m, x in zip(med, v)]], capsize=4)
        for i, m in enumerate(med):
            ax.annotate(f"{m:,.0f}", (i, m), ha="center", va="bottom")
        ax.set_ylabel("jobs/s")
        ax.set_title(f"Queue path: {lp['jobs']:,} jobs `true` as processes, concurrency {lp['concurrency']}")
        written.append(_save(fig, folder, "bench-queue.png"))
    n = out.get("n")
    if n:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, kind, title in ((axes[0], "container", "containers"), (axes[1], "process", "queue path")):
            ws = [x["workers"] for x in n[kind]]
            ax.plot(ws, [x["jobs_per_s"] for x in n[kind]], marker="o", color="C0", label="jobs/s")
            ax.set_xscale("log", base=2)
            ax.set_xticks(ws, [str(w) for w in ws])
            ax.set_xlabel("worker processes")
            ax.set_ylabel("jobs/s", color="C0")
            ax.set_ylim(bottom=0)
            ax.set_title(title)
            ax2 = ax.twinx()
            ax2.plot(ws, [x["redis_cpu_share"] for x in n[kind]], marker="s", color="C3", label="Redis CPU (1 core)")
            ax2.plot(ws, [x["workers_cpu_share"] for x in n[kind]], marker="^", color="C2", label="workers' CPU (all cores)")
            ax2.set_ylim(0, 1.05)
            ax2.set_ylabel("CPU share")
            ax2.legend(loc="lower right", fontsize=8)
        fig.suptitle(f"Scaling with worker processes ({n['cpus']} CPUs)")
        written.append(_save(fig, folder, "bench-scaling.png"))
    return written


def _save(fig, folder, name):
    path = os.path.join(folder, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def section(out, summary_text, command):
    m = out["machine"]
    la0, la1 = m["loadavg_start"], m.get("loadavg_end") or m["loadavg_start"]
    L = [RESULTS_BEGIN, "", f"## Generated results, {m['date']}", "",
         "Command:", "", "```sh", command, "```", "",
         f"dockhand {m['dockhand_commit']}{' (src modified)' if m['dockhand_src_modified'] else ''};"
         f" {m['nproc']} CPUs, docker {m['docker_server']}, redis-server {m['redis_server']};"
         f" load average (1 min) {la0[0]:.1f} at start, {la1[0]:.1f} at the end.", ""]
    for name, title in (("bench-containers.png", "containers"), ("bench-queue.png", "queue path"),
                        ("bench-scaling.png", "scaling")):
        key = {"bench-containers.png": "k", "bench-queue.png": "l", "bench-scaling.png": "n"}[name]
        if out.get(key):
            L.append(f"![{title}]({name})")
            L.append("")
    L += ["The summary as printed:", "", "```", summary_text.strip(), "```", "", RESULTS_END]
    return "\n".join(L) + "\n"


def update_docs(path, text):
    old = open(path).read() if os.path.exists(path) else ""
    i, j = old.find(RESULTS_BEGIN), old.find(RESULTS_END)
    if i >= 0 and j > i:
        rest = old[j + len(RESULTS_END):].lstrip("\n")
        new = old[:i] + text + ("\n" + rest if rest else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(new)
