#!/usr/bin/env python3
"""Submit a Dockhand job from Python with nothing but redis-py, then wait for it.

    REDIS_URL=redis://127.0.0.1:6379/ python3 examples/producer.py

Environment: REDIS_URL, DOCKHAND_PREFIX (default "dockhand"), IMAGE (default
"dockhand-busybox:latest"), JOB_ID (default: a fresh one). Exits 0 when the job
completed, 1 otherwise.

An id is also the idempotency key: run this twice with the same JOB_ID and the
second submission is not run again (the worker publishes `job.duplicate`); the
program then says so and shows the earlier job's record. To run the same work
again, give a new id, or none.
"""
import json
import os
import sys
import time
import uuid

import redis

r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/"), decode_responses=True)
prefix = os.environ.get("DOCKHAND_PREFIX", "dockhand")
job_id = os.environ.get("JOB_ID") or f"py-{uuid.uuid4().hex[:12]}"

job = {
    "id": job_id,  # optional; also the idempotency key
    "image": os.environ.get("IMAGE", "dockhand-busybox:latest"),
    "command": ["sh", "-c", 'echo "hello, $NAME"; echo 42 > /dockhand/output/answer.txt'],
    "env": {"NAME": "python"},
    "limits": {"memory": "64m", "timeout_seconds": 60},
    "metadata": {"requested_by": "examples/producer.py"},
}

# Subscribe before submitting, so the job's last event cannot be missed.
events = r.pubsub()
events.subscribe(f"{prefix}:events")
r.xadd(f"{prefix}:{{default}}:jobs", {"job": json.dumps(job)})
print(f"submitted {job_id}")

deadline = time.time() + 120
while time.time() < deadline:
    message = events.get_message(timeout=1.0)
    if message is None or message["type"] != "message":
        continue
    event = json.loads(message["data"])
    if event["data"].get("id") != job_id:
        continue
    if event["type"] == "job.duplicate":
        print(f"a job with id {job_id} exists already (status {event['data'].get('status')}); "
              "it is not run again. Its record follows; for a new run, use a new id.")
        break
    if event["type"] in ("job.completed", "job.aborted"):
        break

state = r.hgetall(f"{prefix}:{{default}}:job:{job_id}")
print(f"status={state.get('status')} reason={state.get('reason')} exit_code={state.get('exit_code')}")
lines = r.xrange(f"{prefix}:{{default}}:job:{job_id}:log")
for _, fields in lines:
    # An entry holds `count` lines (joined by a newline) when it has that field.
    texts = fields["line"].split("\n") if "count" in fields else [fields["line"]]
    for text in texts:
        print(f"  [{fields['stream']}] {text}")
raw = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/"))  # files are bytes
for name, content in raw.hgetall(f"{prefix}:{{default}}:job:{job_id}:files").items():
    print(f"  file {name.decode()}: {content!r}")
sys.exit(0 if state.get("status") == "completed" else 1)
