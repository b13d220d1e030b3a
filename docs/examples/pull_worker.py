#!/usr/bin/env python3
"""A worker of a nerve pull agent, standard library only.

It fetches deliveries over HTTP (a long poll), handles each event and acks it
with a result, or nacks it with the error when handling raised:

  POST /v1/agents/<agent>/fetch  {"consumer": "<name>", "max": 10, "wait_ms": 20000}
    -> {"deliveries": [{"delivery": "<id>", "attempt": 1, "event": {...}}, ...]}
  POST /v1/agents/<agent>/ack    {"deliveries": [{"delivery": "<id>", "result": ...}, ...]}
  POST /v1/agents/<agent>/nack   {"delivery": "<id>", "error": "why"}

A delivery not acked within the agent's `timeout` is delivered again (to any
worker) with a higher attempt; after `max_retries` retries it goes to the DLQ.
Run as many workers as you like, on any machine that reaches nerve:

  python3 pull_worker.py --url http://127.0.0.1:8000 --agent summarizer --consumer w1

Like echo_agent.py it echoes each event's data as its result; data with
"fail": true is nacked. --idle-exit N stops after N empty fetches (for tests).
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def handle(event, attempt):
    """Your work goes here: return the result (any JSON), or raise to nack."""
    data = event.get("data")
    if isinstance(data, dict) and data.get("fail"):
        raise ValueError("asked to fail")
    return data


def call(url, token, path, body, timeout):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return json.loads(res.read())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--agent", required=True)
    p.add_argument("--consumer", default="worker")
    p.add_argument("--token", default="")
    p.add_argument("--max", type=int, default=10)
    p.add_argument("--wait-ms", type=int, default=20000)
    p.add_argument("--idle-exit", type=int, default=0)
    args = p.parse_args()
    base = f"/v1/agents/{urllib.request.quote(args.agent, safe=':')}"
    idle = 0
    while True:
        try:
            got = call(args.url, args.token, base + "/fetch",
                       {"consumer": args.consumer, "max": args.max, "wait_ms": args.wait_ms},
                       timeout=args.wait_ms / 1000 + 10)
        except (urllib.error.URLError, OSError) as e:
            print(f"fetch failed ({e}); retrying in 1 s", file=sys.stderr)
            time.sleep(1)
            continue
        deliveries = got["deliveries"]
        if not deliveries:
            idle += 1
            if args.idle_exit and idle >= args.idle_exit:
                return
            continue
        idle = 0
        acks = []
        for d in deliveries:
            try:
                acks.append({"delivery": d["delivery"], "result": handle(d["event"], d["attempt"])})
            except Exception as e:  # the event failed: nerve retries it, then dead-letters it
                try:
                    call(args.url, args.token, base + "/nack",
                         {"delivery": d["delivery"], "error": str(e)}, timeout=10)
                except urllib.error.HTTPError as he:
                    print(f"nack refused: {he.read().decode()}", file=sys.stderr)
        if acks:
            try:
                call(args.url, args.token, base + "/ack", {"deliveries": acks}, timeout=10)
            except urllib.error.HTTPError as e:
                # 409: some timed out meanwhile (they come back as new attempts); ack the rest.
                body = json.loads(e.read() or b"{}")
                late = set(body.get("deliveries", []))
                rest = [a for a in acks if a["delivery"] not in late]
                if e.code == 409 and rest:
                    call(args.url, args.token, base + "/ack", {"deliveries": rest}, timeout=10)
                elif e.code != 409:
                    raise


if __name__ == "__main__":
    main()
