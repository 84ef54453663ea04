"""The worker's own latency on Redis: from `send_task` returning until the result key
exists, read by a client that polls the key without sleeping (so the Celery client's
drainer loop and its sleeps are not in the figure). One idle worker, sequential calls;
binaries given on the command line alternate, so a noisy machine weighs on each alike.

    python worker_latency.py --calls 1000 --pairs 3 OLD_BINARY NEW_BINARY

Binaries default to $CELERIAC_BIN. Uses Redis database 14 (as `bench.py`), flushed.
"""

import argparse
import tempfile
from pathlib import Path

from celery import Celery

from bench import BIN, PLUGINS, Redis, p50, result_latencies, start_celeriac, stop, wait_ready


def latencies(binary, calls):
    """Sorted ms from `send_task` returning to the result key being present."""
    broker = Redis()
    broker.reset()
    app = Celery("latency-client", broker=broker.url, backend=broker.backend_url)
    with tempfile.TemporaryFile("w+") as log:
        process = start_celeriac(broker, log, binary=binary)
        try:
            wait_ready(app)
            found = result_latencies(app, calls, broker.results)
        finally:
            stop(process)
    app.close()
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("binaries", nargs="*", type=Path, default=[BIN])
    args = parser.parse_args()
    assert (PLUGINS / "math.wasm").exists(), f"no {PLUGINS / 'math.wasm'}: run `make plugins`"
    for _ in range(args.pairs):
        for binary in args.binaries:
            found = latencies(binary, args.calls)
            print(f"{binary}: p50 {p50(found):.3f} ms, p90 {found[int(len(found) * 0.9)]:.3f} ms")


if __name__ == "__main__":
    main()
