"""Celeriac against Celery's prefork worker, same broker, same backend, same run.

For each broker (Redis; RabbitMQ with results on Redis) it (1) fills the queue with N `math.add` tasks from the real Python
Celery client while no worker runs, (2) starts the worker (`-c 2`) and times the drain
until every result is stored, (3) measures round-trip latency of sequential
`send_task(...).get()` calls, and (4) records the worker's RSS (all processes) while
idle and at the end of the drain. Celeriac and Celery alternate, `--runs` times each;
medians go to RESULTS.md.

    python tests/bench/bench.py --tasks 20000 --rtt 1000 --runs 3
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import amqp
import redis
from celery import Celery

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = Path(os.environ.get("CELERIAC_BIN", TARGET / "release" / "celeriac"))
PLUGINS = Path(os.environ.get("CELERIAC_PLUGIN_DIR", TARGET / "plugins"))
REDIS_DB = 14


def rss_kb(pid, field="VmRSS"):
    """Resident memory of a process and all its descendants, in KiB; `VmHWM` for the peak."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith(field + ":"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
    return total


class Redis:
    name = "redis"

    def __init__(self):
        self.url = f"redis://127.0.0.1:6379/{REDIS_DB}"
        self.backend_url = self.url
        self.client = redis.Redis("127.0.0.1", 6379, db=REDIS_DB)

    def reset(self):
        self.client.flushdb()

    def drained(self, n):
        """Every task taken, acked and its result stored."""
        return (self.client.llen("celery") == 0 and self.client.hlen("unacked") == 0
                and self.client.dbsize() >= n)


class Amqp:
    """RabbitMQ as broker, results on Redis (the usual pairing)."""

    name = "rabbitmq"

    def __init__(self):
        self.url = "amqp://guest:guest@127.0.0.1:5672//"
        self.backend_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
        self.results = redis.Redis("127.0.0.1", 6379, db=REDIS_DB)

    def reset(self):
        self.results.flushdb()
        with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
            channel = conn.channel()
            channel.queue_declare("celery", durable=True, auto_delete=False)
            channel.queue_purge("celery")

    def drained(self, n):
        """Every result stored."""
        return self.results.dbsize() >= n


def start_celeriac(broker, log):
    folder = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    (folder / "plugins.d").mkdir()
    (folder / "plugins.d" / "math.wasm").write_bytes((PLUGINS / "math.wasm").read_bytes())
    process = subprocess.Popen(
        [str(BIN), "--broker", broker.url, "--result-backend", broker.backend_url, "--loglevel", "warn",
         "worker", "--plugins", str(folder / "plugins.d"), "-c", "2"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=log,
    )
    return process


def start_celery(broker, log):
    env = dict(os.environ, BENCH_BROKER=broker.url, BENCH_BACKEND=broker.backend_url, PYTHONPATH=str(HERE))
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-c", "2", "-P", "prefork",
         "--loglevel", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )


def wait_ready(app, timeout=60):
    """Ready when one task round-trips."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if app.send_task("math.add", (0, 0)).get(timeout=1) == 0:
                return
        except Exception:
            pass
    raise RuntimeError("worker did not become ready")


def round_trips(app, calls, check=True):
    """Latencies in ms of `calls` sequential send_task(...).get(), sorted."""
    latencies = []
    for i in range(calls):
        t = time.perf_counter()
        result = app.send_task("math.add", (i, 1)).get(timeout=10)
        latencies.append((time.perf_counter() - t) * 1000)
        assert not check or result == i + 1, f"math.add({i}, 1) returned {result}"
    return sorted(latencies)


def p50(latencies):
    return latencies[len(latencies) // 2]


def p99(latencies):
    return latencies[int(len(latencies) * 0.99) - 1]


def client_floor(broker, calls):
    """Round trip of the same Celery client against null_worker.py, which does nothing but
    take the message and store a fixed result: the part of every round trip that is the
    client's and the broker's, whatever the worker."""
    broker.reset()
    app = Celery("bench-client", broker=broker.url, backend=broker.backend_url)
    process = subprocess.Popen([sys.executable, str(HERE / "null_worker.py"), broker.url])
    try:
        wait_ready(app)
        latencies = round_trips(app, calls, check=False)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"p50": p50(latencies), "p99": p99(latencies)}


def one_run(kind, broker, tasks, rtt_calls):
    broker.reset()
    app = Celery("bench-client", broker=broker.url, backend=broker.backend_url)
    # Fill the queue while no worker runs.
    results = [app.send_task("math.add", (i, i)) for i in range(tasks)]
    start = start_celeriac if kind == "celeriac" else start_celery
    with tempfile.TemporaryFile("w+") as log:
        process = start(broker, log)
        try:
            began = time.perf_counter()
            while not broker.drained(tasks):
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{kind} worker exited:\n{log.read()}")
                time.sleep(0.01)
            drain = time.perf_counter() - began
            rss_busy = rss_kb(process.pid, "VmHWM")
            wrong = [i for i, r in list(enumerate(results))[:: max(1, tasks // 100)] if r.get(timeout=10) != 2 * i]
            assert not wrong, f"{kind}: wrong results for {wrong[:5]}"
            wait_ready(app)
            time.sleep(1)
            rss_idle = rss_kb(process.pid)
            latencies = round_trips(app, rtt_calls)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return {
        "rate": tasks / drain,
        "p50": p50(latencies),
        "p99": p99(latencies),
        "rss_idle": rss_idle / 1024,
        "rss_busy": rss_busy / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rtt", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()

    brokers = [Redis(), Amqp()]
    rows = []
    for broker in brokers:
        figures = {"celeriac": [], "celery": []}
        for run in range(args.runs):
            for kind in ("celeriac", "celery"):  # alternate, so drift hits both alike
                result = one_run(kind, broker, args.tasks, args.rtt)
                print(f"{broker.name} run {run + 1} {kind}: " + ", ".join(f"{k}={v:.2f}" for k, v in result.items()),
                      flush=True)
                figures[kind].append(result)
        median = {kind: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for kind, runs in figures.items()}
        rows.append((broker.name, median))
        if broker.name == "redis":
            floor = client_floor(broker, args.rtt)
            print(f"redis client floor: p50={floor['p50']:.2f} p99={floor['p99']:.2f}", flush=True)

    lines = [
        "# Benchmark: Celeriac against Celery's prefork worker",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs), `python tests/bench/bench.py --tasks {args.tasks} --rtt {args.rtt} --runs {args.runs}`.",
        f"Both workers `-c 2`, results on the same backend; medians of {args.runs} alternating runs.",
        "Drain: tasks/s to run a pre-filled queue of `math.add` and store every result.",
        "Round trip: one `send_task(...).get()` from the Python Celery client at a time.",
        "",
        "Floor (Redis): the same client's round trip against `null_worker.py`, a loop that only takes",
        "each message and stores a fixed result (BRPOP, then SET + PUBLISH): the client's and the",
        f"broker's share of every round trip, whatever the worker. This run: p50 {floor['p50']:.2f} ms,",
        f"p99 {floor['p99']:.2f} ms.",
        "",
        "| broker | figure | Celeriac | Celery prefork | Celeriac / Celery |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, m in rows:
        c, p = m["celeriac"], m["celery"]
        lines += [
            f"| {name} | drain (tasks/s) | {c['rate']:.0f} | {p['rate']:.0f} | {c['rate'] / p['rate']:.1f}× |",
            f"| {name} | round trip p50 (ms) | {c['p50']:.2f} | {p['p50']:.2f} | {c['p50'] / p['p50']:.2f} |",
            f"| {name} | round trip p99 (ms) | {c['p99']:.2f} | {p['p99']:.2f} | {c['p99'] / p['p99']:.2f} |",
            f"| {name} | RSS idle (MiB) | {c['rss_idle']:.1f} | {p['rss_idle']:.1f} | {c['rss_idle'] / p['rss_idle']:.2f} |",
            f"| {name} | peak RSS while draining (MiB) | {c['rss_busy']:.1f} | {p['rss_busy']:.1f} | {c['rss_busy'] / p['rss_busy']:.2f} |",
        ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
