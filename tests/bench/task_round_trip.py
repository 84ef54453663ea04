"""Round trip of one plugin task from the Python Celery client, on Redis: sequential
`send_task(...).get()` calls against an idle worker serving the task's plugin (and `math`,
which readiness uses) from $CELERIAC_PLUGIN_DIR. Binaries given on the command line
alternate, so a noisy machine weighs on each alike. Where `worker_latency.py` follows `math.add`, this follows any task,
so the cost of a heavy guest (Python, JavaScript) shows.

    python task_round_trip.py --task textkit.words --args '["a b a"]' OLD_BINARY NEW_BINARY

Binaries default to $CELERIAC_BIN. Uses Redis database 12, flushed.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import redis
from celery import Celery

from bench import BIN, p50, start_celeriac, stop, wait_ready

DB = 12
URL = f"redis://127.0.0.1:6379/{DB}"


class Broker:
    url = URL
    backend_url = URL


def latencies(binary, task, args, calls):
    """Sorted ms of `calls` sequential round trips of `task`."""
    redis.Redis("127.0.0.1", 6379, db=DB).flushdb()
    app = Celery("round-trip-client", broker=URL, backend=URL)
    with tempfile.TemporaryFile("w+") as log:
        process = start_celeriac(Broker, log, binary=binary, plugins={"math", task.split(".")[0]})
        try:
            wait_ready(app)
            app.send_task(task, args).get(timeout=10)  # the plugin's first instance
            found = []
            for _ in range(calls):
                started = time.perf_counter()
                app.send_task(task, args).get(timeout=10)
                found.append((time.perf_counter() - started) * 1000)
        finally:
            stop(process)
    app.close()
    return sorted(found)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="math.add")
    parser.add_argument("--args", default="[1, 2]", help="the task's arguments, as a JSON list")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("binaries", nargs="*", type=Path, default=[BIN])
    args = parser.parse_args()
    for _ in range(args.pairs):
        for binary in args.binaries:
            found = latencies(binary, args.task, json.loads(args.args), args.calls)
            print(f"{binary}: {args.task} p50 {p50(found):.2f} ms, p90 {found[len(found) * 9 // 10]:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
