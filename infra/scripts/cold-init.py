#!/usr/bin/env python3
"""Cold init of the Lambda bootstraps: process start to ready for the first event.

Plays the Lambda runtime API (the part a custom runtime polls: `GET .../invocation/next`,
`POST .../invocation/{id}/response|error`, `POST .../init/error`) on a local port, starts each
bootstrap with `AWS_LAMBDA_RUNTIME_API` pointing at it, and times from just before the process
is spawned to the moment its first `next` request arrives, i.e. everything the function does
before it can take an event: exec, tokio, settings, the SDK configuration, the Secrets Manager
read of the token key, the clients. It then hands over one event and waits for the answer, so
a bootstrap that is ready but broken fails here too.

Usage: cold-init.py BOOTSTRAP_DIR [--runs N] [--env K=V ...] [--event NAME=FILE ...]
Prints one line per function: median and max over N runs, in milliseconds.
"""

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

FUNCTIONS = ["connect", "send-message", "stream-out", "run-turn", "api"]


class RuntimeApi(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, event: bytes):
        super().__init__(("127.0.0.1", 0), Handler)
        self.event = event
        self.first_next = None
        self.outcome = None
        self.done = threading.Event()
        self.handed_over = False


class Handler(http.server.BaseHTTPRequestHandler):
    server: RuntimeApi

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.endswith("/runtime/invocation/next"):
            self.send_error(404)
            return
        if self.server.first_next is None:
            self.server.first_next = time.perf_counter()
        if self.server.handed_over:
            # One event per run: the next poll waits until the run is torn down.
            self.server.done.wait(30)
            self.send_error(410)
            return
        self.server.handed_over = True
        request_id = str(uuid.uuid4())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30_000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:chatrun")
        self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
        self.send_header("Content-Length", str(len(self.server.event)))
        self.end_headers()
        self.wfile.write(self.server.event)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = self.path.rsplit("/", 1)[-1]
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.outcome = (kind, body.decode("utf-8", "replace"))
        self.server.done.set()


def run_once(bootstrap: str, env: dict, event: bytes) -> float:
    api = RuntimeApi(event)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    child_env = {
        **env,
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.server_address[1]}",
        # What Lambda sets for every function; lambda_runtime refuses to start without them.
        "AWS_LAMBDA_FUNCTION_NAME": os.path.basename(os.path.dirname(bootstrap)),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/chatrun",
        "AWS_LAMBDA_LOG_STREAM_NAME": "cold-init",
    }
    started = time.perf_counter()
    proc = subprocess.Popen([bootstrap], env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not api.done.wait(0.05):
            if proc.poll() is not None:
                raise SystemExit(f"{bootstrap}: exited with {proc.returncode}: {proc.stderr.read().decode('utf-8', 'replace')[-1500:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{bootstrap}: no answer within 30 s")
        kind, body = api.outcome
        if kind != "response":
            raise SystemExit(f"{bootstrap}: {kind}: {body[:500]}")
        if api.first_next is None:
            raise SystemExit(f"{bootstrap}: answered without polling")
        return (api.first_next - started) * 1000
    finally:
        proc.kill()
        _, stderr = proc.communicate()
        api.shutdown()
        api.server_close()
        if api.outcome and api.outcome[0] != "response":
            sys.stderr.write(stderr.decode("utf-8", "replace")[-2000:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap_dir")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--event", action="append", default=[], help="NAME=FILE: the event handed to NAME")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_LAMBDA")}
    env.update(dict(kv.split("=", 1) for kv in args.env))
    events = dict(kv.split("=", 1) for kv in args.event)
    results = {}
    for name in FUNCTIONS:
        bootstrap = os.path.join(args.bootstrap_dir, name, "bootstrap")
        event = open(events[name], "rb").read() if name in events else b"{}"
        times = [run_once(bootstrap, env, event) for _ in range(args.runs)]
        results[name] = {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2), "runs": args.runs}
        print(f"{name:13} median {results[name]['median_ms']:7.2f} ms   max {results[name]['max_ms']:7.2f} ms   ({args.runs} runs)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
