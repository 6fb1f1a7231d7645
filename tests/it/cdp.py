#!/usr/bin/env python3
"""A line-based bridge to one Chromium page over the Chrome DevTools Protocol.

    python3 tests/it/cdp.py <devtools port>

Connects to the first page target of the Chromium listening on 127.0.0.1:<port>,
then, for each line on stdin (a JSON object {"method": ..., "params": {...}}),
sends that command and prints one line on stdout: {"result": ...} or
{"error": ...}. Events the page sends meanwhile are dropped: the tests ask the
page for its state (Runtime.evaluate) instead of listening.

Used by tests/it/dashboard.rs, which keeps every bit of logic (what to click,
what to wait for) on its side. Needs websocket-client (scripts/lib.sh installs it).
"""
import json
import sys
import time
import urllib.request

import websocket


def page_socket(port: int) -> str:
    # Chromium may still be opening its first tab: a bounded wait, not a fixed sleep.
    deadline = time.monotonic() + 30
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                for target in json.load(r):
                    if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                        return target["webSocketDebuggerUrl"]
        except OSError as e:
            last = e
        time.sleep(0.1)
    sys.exit(f"no page target on port {port}: {last}")


def main() -> None:
    ws = websocket.create_connection(page_socket(int(sys.argv[1])), timeout=120, suppress_origin=True)
    next_id = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        next_id += 1
        ws.send(json.dumps({"id": next_id, "method": cmd["method"], "params": cmd.get("params", {})}))
        while True:
            msg = json.loads(ws.recv())
            if msg.get("id") == next_id:
                break
        out = {"error": msg["error"]} if "error" in msg else {"result": msg.get("result", {})}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    ws.close()


if __name__ == "__main__":
    main()
