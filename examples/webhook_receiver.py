#!/usr/bin/env python3
"""A webhook receiver that verifies Dockhand's Standard Webhooks signatures.

    python3 examples/webhook_receiver.py --port 8088 --secret whsec_...

It listens on 127.0.0.1, which the workers' SSRF guard refuses unless they allow
it: start them with DOCKHAND__WEBHOOKS__ALLOW_NETWORKS=127.0.0.1/32 (or
`webhooks.allow_networks = ["127.0.0.1/32"]` in their config), then
`dockhand subscriber add local http://127.0.0.1:8088/hook`.

Uses the reference verifier from PyPI (`pip install standardwebhooks`). Prints one
line per verified event (and refuses, with 400, anything whose signature does not
verify). With --once it exits after the first verified event.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--secret", required=True)
parser.add_argument("--once", action="store_true")
args = parser.parse_args()
verifier = Webhook(args.secret)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = verifier.verify(body, headers)
        except WebhookVerificationError as e:
            self.send_response(400)
            self.end_headers()
            print(f"REFUSED: {e}", flush=True)
            return
        self.send_response(204)
        self.end_headers()
        data = event["data"]
        print(
            f"verified {event['type']} webhook-id={headers['webhook-id']} "
            f"job={data['id']} status={data['status']} reason={data.get('reason')} "
            f"result_text={json.dumps(data.get('result_text'))}",
            flush=True,
        )
        if args.once:
            self.server.done = True

    def log_message(self, *_):
        pass


server = HTTPServer(("127.0.0.1", args.port), Handler)
server.done = False
while not server.done:
    server.handle_request()
sys.exit(0)
