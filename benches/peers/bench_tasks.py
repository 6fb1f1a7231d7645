"""The peers' side of the comparisons of scripts/bench (phases k, l, n): the same
two tasks for Celery and for RQ, so that each runs exactly what Dockhand runs.

- `container(image)`: one `true` container through docker-py, as a Python shop
  would write it: `containers.run(image, ["true"], remove=True,
  network_mode="none", network_disabled=True)` (create, start, wait, read the
  log, remove). `network_disabled` as Dockhand's no-network containers have it:
  without it the engine runs a network hook (a process of its own) per container,
  which would cost the peers more engine time than Dockhand pays.
- `process()`: `subprocess.run(["true"])`, the queue path's job.

Each task ends with one `INCR` of BENCH_COUNTER on BENCH_REDIS_URL: that is how
the bench sees a job finish (Celery keeps no trace of a finished task without a
result backend). Dockhand's jobs are counted without it (its stream entries are
deleted as they finish), so the peers pay one Redis round trip per job more.

Imported by `celery -A bench_tasks worker` and by `rq worker` (PYTHONPATH holds
this folder); the environment says which Redis, counter and Celery queue.
"""

import os
import subprocess

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER = os.environ.get("BENCH_COUNTER", "bench:peers:done")

app = Celery("bench_tasks", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
)

_redis = None
_docker = None


def _count():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(REDIS_URL)
    _redis.incr(COUNTER)


def run_container(image):
    global _docker
    if _docker is None:
        import docker

        _docker = docker.from_env()
    _docker.containers.run(image, ["true"], remove=True, network_mode="none",
                          network_disabled=True)
    _count()


def run_process():
    subprocess.run(["true"], check=True)
    _count()


@app.task(name="bench.container")
def container(image):
    run_container(image)


@app.task(name="bench.process")
def process():
    run_process()
