#!/usr/bin/env python3
"""A nerve process agent, standard library only.

nerve writes one JSON object per line on stdin:
  {"type":"event","delivery":"<id>","attempt":1,"event":{...}}
and this agent answers on stdout, in any order:
  {"type":"ack","delivery":"<id>","result":<json>,"emit":[{"topic":..,"data":..}]}
  {"type":"nack","delivery":"<id>","error":"..."}

It echoes each event's data as its result. An event whose data has
"fail": true is refused; "fail_attempts": n refuses the first n attempts;
"emit_to": "<topic>" emits a follow-up event there ("emit_to": [t1, t2, ...]
emits to t1 with the rest in the follow-up's data, so agents can chain). It exits when nerve
closes stdin.
"""
import json
import sys


def handle(event, attempt):
    data = event.get("data")
    if isinstance(data, dict) and data.get("fail"):
        raise ValueError("asked to fail")
    if isinstance(data, dict) and attempt <= data.get("fail_attempts", 0):
        raise ValueError(f"asked to fail attempt {attempt}")
    reply = {"result": data}
    if isinstance(data, dict) and data.get("emit_to"):
        # A topic, or a list of topics: the next one gets the rest.
        targets = data["emit_to"] if isinstance(data["emit_to"], list) else [data["emit_to"]]
        follow_up = {"from": event["id"]}
        if targets[1:]:
            follow_up["emit_to"] = targets[1:]
        reply["emit"] = [{"topic": targets[0], "data": follow_up}]
    return reply


def main():
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("type") != "event":
            continue
        answer = {"delivery": msg["delivery"]}
        try:
            answer.update(type="ack", **handle(msg["event"], msg.get("attempt", 1)))
        except Exception as e:  # the agent reports, nerve retries
            answer.update(type="nack", error=str(e))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
