#!/usr/bin/env python3
"""Write the seed inputs of each fuzz target into fuzz/corpus/<target>/: Celery 5 task
messages as they travel (protocol v2 and v1, a chain, a chord part, an ETA, a failure
meta), in each broker's encoding. Standard library only; the encodings follow
../shared/research/celery-wire.md."""

import base64
import json
import struct
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "corpus"


def headers(task, task_id, **extra):
    h = {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
         "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
         "root_id": task_id, "parent_id": None, "argsrepr": "(2, 3)", "kwargsrepr": "{}",
         "origin": "gen1@host", "ignore_result": False, "replaced_task_nesting": 0,
         "stamped_headers": None, "stamps": {}}
    h.update(extra)
    return h


def messages():
    a, b, g = (str(uuid.UUID(int=i)) for i in (1, 2, 3))
    plain = (headers("math.add", a), [[2, 3], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    chain = (headers("math.mul", a), [[3, 4], {}, {"callbacks": None, "errbacks": None, "chord": None, "chain": [
        {"task": "math.add", "args": [1], "kwargs": {}, "options": {"task_id": b, "queue": "q"},
         "subtask_type": None, "immutable": False}]}])
    chord = (headers("math.add", a, group=g, group_index=0), [[1, 1], {}, {"chord": {
        "task": "math.tsum", "args": [], "kwargs": {}, "options": {"task_id": b}, "subtask_type": None,
        "immutable": False, "chord_size": 2}}])
    eta = (headers("math.spin", a, eta="2026-11-25T10:00:00.123456+00:00", expires="2026-11-26T10:00:00+00:00",
                   retries=2, timelimit=[10, 5.5], celeriac_republished=True), [[10], {"x": 1.5e-300}, {}])
    v1 = ({}, {"task": "math.add", "id": a, "args": [2, 3], "kwargs": {}, "retries": 0, "eta": None,
               "expires": None, "utc": True, "callbacks": None, "errbacks": None, "taskset": None, "chord": None})
    return {"plain": plain, "chain": chain, "chord": chord, "eta": eta, "v1": v1}


def envelope(h, body, routing_key="celery"):
    return json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8", "content-type": "application/json", "headers": h,
        "properties": {"correlation_id": h.get("id", ""), "reply_to": "r", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": routing_key}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.UUID(int=9))},
    })


def amqp_value(v):
    """py-amqp's field encoding of a JSON value."""
    if v is None:
        return b"V"
    if isinstance(v, bool):
        return b"t" + struct.pack(">B", v)
    if isinstance(v, int):
        return b"l" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, str):
        raw = v.encode()
        return b"S" + struct.pack(">I", len(raw)) + raw
    if isinstance(v, list):
        items = b"".join(amqp_value(i) for i in v)
        return b"A" + struct.pack(">I", len(items)) + items
    return b"F" + amqp_table(v)


def amqp_table(d):
    entries = b"".join(struct.pack(">B", len(k.encode())) + k.encode() + amqp_value(v) for k, v in d.items())
    return struct.pack(">I", len(entries)) + entries


def write(target, name, data):
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def main():
    for name, (h, body) in messages().items():
        env = envelope(h, body)
        write("kombu_envelope", name, env)
        write("sqs_body", name, base64.b64encode(env.encode()))
        write("amqp_headers", name, amqp_table(h) + json.dumps(body).encode())
        write("task_message", name, json.dumps(h).encode() + b"\0" + json.dumps(body).encode())
    a = str(uuid.UUID(int=1))
    write("result_meta", "success", json.dumps({"status": "SUCCESS", "result": 5, "traceback": None,
          "children": [], "date_done": "2026-11-25T10:00:00.123456+00:00", "task_id": a}))
    write("result_meta", "failure", json.dumps({"status": "FAILURE", "result": {
        "exc_type": "ZeroDivisionError", "exc_message": ["division by zero"], "exc_module": "builtins"},
        "traceback": "Traceback", "children": [[[a, None], None]], "date_done": None, "task_id": a,
        "group_id": a, "parent_id": a}))


if __name__ == "__main__":
    main()
