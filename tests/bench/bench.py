"""Celeriac against Celery's prefork worker, same broker, same backend, same run.

For each broker (Redis; RabbitMQ with results on Redis) it (1) fills the queue with N `math.add` tasks from the real Python
Celery client while no worker runs, (2) starts the worker (`-c 2`) and times the drain
until every result is stored, with the CPU time each task cost the worker and the broker
and backend servers, (3) measures round-trip latency of sequential `send_task(...).get()`
calls, counting the client's own sleeps, and the worker's part of them (until the result
key exists, polled without sleeping), and (4) records the worker's RSS (all processes)
while idle and at the end of the drain; then (5) drains N tasks sent with `ignore_result=True`,
and (6) on Redis, N tasks with results again, Celeriac given a second I/O thread (`--io-threads 2`).
Celeriac and Celery alternate, `--runs` times each; medians go to RESULTS.md, with a
chart in RESULTS.png. Beside them: the Celery client's own round-trip floor, the raw
Redis ceiling for the commands one task needs, and the host's per-task cost from the
criterion micro-benchmark (`host/benches/host_cost.rs`), when `make bench` has run it.

    python tests/bench/bench.py --tasks 20000 --rtt 1000 --runs 3
"""

import argparse
import datetime
import json
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


def process_tree(pid):
    """A process and all its descendants (Celery's prefork children)."""
    todo = [pid]
    while todo:
        p = todo.pop()
        yield p
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass


def rss_kb(pid, field="VmRSS"):
    """Resident memory of a process and all its descendants, in KiB; `VmHWM` for the peak."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith(field + ":"))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
    return total


def cpu_seconds(pid):
    """User + system CPU time of a process and all its descendants."""
    ticks = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (FileNotFoundError, ProcessLookupError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def server_pid(command):
    """The pid of the running server whose command name is `command` (beam.smp, redis-server)."""
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == command:
                    return int(p)
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
            pass
    raise RuntimeError(f"no {command} process is running")


class ClientSleeps:
    """Counts the `time.sleep(0)` calls Celery's result drainer makes while a `.get()` waits
    (celery/backends/asynchronous.py yields to other threads between polls)."""

    def __init__(self):
        self.count = 0
        self.per_call = []
        self.latencies = []
        self.counted_before = 0

    def call_done(self, latency):
        self.per_call.append(self.count - self.counted_before)
        self.latencies.append(latency)
        self.counted_before = self.count

    def backlog(self):
        """For the slowest 1% of round trips: the median number of sleeps, and the median
        number of short-path round trips just before each. A `.get()` that finds its result
        at the first read leaves its subscription's messages unread (the subscribe and
        unsubscribe replies, the result's PUBLISH); the next `.get()` that has to wait reads
        through all of them, one poll and one sleep each."""
        shorts_before, run = [], 0
        for sleeps in self.per_call:
            shorts_before.append(run)
            run = run + 1 if sleeps == 1 else 0
        slowest = sorted(range(len(self.latencies)), key=self.latencies.__getitem__)[-max(1, len(self.latencies) // 100):]
        return {"slowest sleeps": statistics.median(self.per_call[i] for i in slowest),
                "slowest after": statistics.median(shorts_before[i] for i in slowest)}

    def short_path(self):
        """Share of round trips that found the result at the first read (one sleep, in
        `on_state_change`, and no drain loop)."""
        if min(self.per_call) < 1:
            # Every `.get()` sleeps at least once there; none counted means this Celery
            # no longer sleeps through that name, and the counts would mean nothing.
            raise RuntimeError("celery.backends.asynchronous.sleep was not called: cannot count the client's sleeps")
        return sum(1 for n in self.per_call if n == 1) / len(self.per_call)

    def __enter__(self):
        import celery.backends.asynchronous as drainer

        self.module, self.sleep = drainer, drainer.sleep

        def counted(seconds):
            self.count += 1
            self.sleep(seconds)

        drainer.sleep = counted
        return self

    def __exit__(self, *exc):
        self.module.sleep = self.sleep


def sleep0_us():
    """What one `time.sleep(0)` costs this process, in µs (median of 5 × 1,000)."""
    costs = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(1000):
            time.sleep(0)
        costs.append((time.perf_counter() - began) * 1000)
    return statistics.median(costs)


class Redis:
    name = "redis"
    servers = {"Redis": "redis-server"}

    def __init__(self):
        self.url = f"redis://127.0.0.1:6379/{REDIS_DB}"
        self.backend_url = self.url
        self.client = redis.Redis("127.0.0.1", 6379, db=REDIS_DB)
        self.results = self.client  # as Amqp's: where the result keys are

    def reset(self):
        self.client.flushdb()

    def drained(self, n):
        """Every task taken, acked and its result stored."""
        return self.emptied() and self.client.dbsize() >= n

    def emptied(self):
        """Every task taken and acked."""
        return self.client.llen("celery") == 0 and self.client.hlen("unacked") == 0


class Amqp:
    """RabbitMQ as broker, results on Redis (the usual pairing)."""

    name = "rabbitmq"
    servers = {"RabbitMQ": "beam.smp", "Redis": "redis-server"}

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

    def emptied(self):
        """Every task delivered (the few still unacknowledged are a few ms of work)."""
        with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
            _, waiting, _ = conn.channel().queue_declare("celery", passive=True)
        return waiting == 0


def start_celeriac(broker, log, binary=BIN, options=(), plugins=("math",)):
    """A Celeriac worker (`-c 2`) serving `plugins` from $CELERIAC_PLUGIN_DIR."""
    folder = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    (folder / "plugins.d").mkdir()
    for plugin in plugins:
        (folder / "plugins.d" / f"{plugin}.wasm").write_bytes((PLUGINS / f"{plugin}.wasm").read_bytes())
    process = subprocess.Popen(
        [str(binary), "--broker", broker.url, "--result-backend", broker.backend_url, "--loglevel", "warn",
         "worker", "--plugins", str(folder / "plugins.d"), "-c", "2", *options],
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


def round_trips(app, calls, check=True, sleeps=None):
    """Latencies in ms of `calls` sequential send_task(...).get(), sorted."""
    latencies = []
    for i in range(calls):
        t = time.perf_counter()
        result = app.send_task("math.add", (i, 1)).get(timeout=10)
        latencies.append((time.perf_counter() - t) * 1000)
        if sleeps:
            sleeps.call_done(latencies[-1])
        assert not check or result == i + 1, f"math.add({i}, 1) returned {result}"
    return sorted(latencies)


def result_latencies(app, calls, results):
    """Latencies in ms of `calls` sequential tasks, from `send_task` returning until the
    result key exists in `results` (a broker's Redis client for them), sorted: the worker's
    own part of a round trip. The key is polled without sleeping, so the Celery client's
    drainer loop and its sleeps are not in it."""
    found = []
    for i in range(calls):
        key = f"celery-task-meta-{app.send_task('math.add', (i, 1)).id}"
        sent = time.perf_counter()
        while not results.exists(key):
            pass
        found.append((time.perf_counter() - sent) * 1000)
    return sorted(found)


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
        with ClientSleeps() as sleeps:
            latencies = round_trips(app, calls, check=False, sleeps=sleeps)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"p50": p50(latencies), "p99": p99(latencies), "short": sleeps.short_path(), **sleeps.backlog()}


def wait_until(done, process, log, kind):
    """Seconds until `done()` holds, failing if the worker exits."""
    began = time.perf_counter()
    while not done():
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{kind} worker exited:\n{log.read()}")
        time.sleep(0.01)
    return time.perf_counter() - began


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


# Celeriac's opt-in second I/O thread (README, "Speed"), drained on Redis beside the default.
IO_THREADS = ("--io-threads", "2")

# A drain at this share of the rate its CPU a task allows is called CPU-bound: two busy
# processes on as many cores never get all of them.
CPU_BOUND_SHARE = 0.8


def drain_run(kind, broker, tasks, ignore_result=False, options=()):
    """Drain rate alone: of tasks sent with ignore_result=True (broker and worker alone, until
    every task is acknowledged), or with their results stored; `options` go to Celeriac."""
    broker.reset()
    app = Celery("bench-client", broker=broker.url, backend=broker.backend_url)
    with app.producer_or_acquire() as producer:
        for i in range(tasks):
            app.send_task("math.add", (i, i), ignore_result=ignore_result, producer=producer)
    done = broker.emptied if ignore_result else lambda: broker.drained(tasks)
    with tempfile.TemporaryFile("w+") as log:
        process = start_celeriac(broker, log, options=options) if kind == "celeriac" else start_celery(broker, log)
        try:
            drain = wait_until(done, process, log, kind)
        finally:
            stop(process)
    return tasks / drain


def one_run(kind, broker, tasks, rtt_calls):
    broker.reset()
    app = Celery("bench-client", broker=broker.url, backend=broker.backend_url)
    # Fill the queue while no worker runs.
    results = [app.send_task("math.add", (i, i)) for i in range(tasks)]
    start = start_celeriac if kind == "celeriac" else start_celery
    servers = {name: server_pid(command) for name, command in broker.servers.items()}
    servers_before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    with tempfile.TemporaryFile("w+") as log:
        process = start(broker, log)
        try:
            drain = wait_until(lambda: broker.drained(tasks), process, log, kind)
            # CPU per task over the drain (the worker's start-up included, as in the rate).
            cpu = {"worker": cpu_seconds(process.pid)}
            cpu.update({name: cpu_seconds(pid) - servers_before[name] for name, pid in servers.items()})
            rss_busy = rss_kb(process.pid, "VmHWM")
            # The stored metas, read with GET: the client's result consumer holds one queued
            # PUBLISH per drained task, and working through 20,000 of them on a busy machine
            # outlasts a `.get()` timeout (seen: a round trip that timed out with its result
            # long stored). The round trips get a fresh client without that backlog.
            checked = list(enumerate(results))[:: max(1, tasks // 100)]
            wrong = [i for i, r in checked if app.backend.get_task_meta(r.id).get("result") != 2 * i]
            assert not wrong, f"{kind}: wrong results for {wrong[:5]}"
            app.backend.result_consumer.stop()
            app = Celery("bench-client", broker=broker.url, backend=broker.backend_url)
            wait_ready(app)
            time.sleep(1)
            rss_idle = rss_kb(process.pid)
            with ClientSleeps() as sleeps:
                latencies = round_trips(app, rtt_calls, sleeps=sleeps)
            own = result_latencies(app, rtt_calls, broker.results)
        finally:
            stop(process)
    return {
        "rate": tasks / drain,
        "p50": p50(latencies),
        "p99": p99(latencies),
        "own p50": p50(own),
        "own p99": p99(own),
        "rss_idle": rss_idle / 1024,
        "rss_busy": rss_busy / 1024,
        "sleeps": statistics.median(sleeps.per_call),
        "short": sleeps.short_path(),
        **sleeps.backlog(),
        **{f"cpu {name}": seconds * 1e6 / tasks for name, seconds in cpu.items()},
    }


# What one task costs Redis on the worker's side (Redis broker, Redis results), command by
# command: taking it (RPOP, then ZADD + HSET of the unacked bookkeeping), storing its result
# (GET, so a stored SUCCESS is kept; SET with expiry; PUBLISH) and acking it (ZREM + HDEL).
# Values are the sizes of a real `math.add` envelope and result meta.
ENVELOPE = "x" * 950
META = "m" * 190
TASK_COMMANDS = [
    ["ZADD", "bench:unacked_index", "__rand_int__", "tag:__rand_int__"],
    ["HSET", "bench:unacked", "tag:__rand_int__", ENVELOPE],
    ["GET", "celery-task-meta-__rand_int__"],
    ["SET", "celery-task-meta-__rand_int__", META, "EX", "86400"],
    ["PUBLISH", "celery-task-meta-__rand_int__", META],
    ["ZREM", "bench:unacked_index", "tag:__rand_int__"],
    ["HDEL", "bench:unacked", "tag:__rand_int__"],
]


def redis_benchmark(*args):
    """Requests/s that redis-benchmark reports, pipelined as the worker batches."""
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", "6379", "--dbnum", str(REDIS_DB), "-n", "200000",
                          "-P", "64", "-r", "1000000", "-q", "--csv", *args],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split('","') for line in out.splitlines()[1:] if line.startswith('"')]
    return {row[0].strip('"'): float(row[1].strip('"')) for row in rows}


def redis_ceiling():
    """Tasks/s Redis could serve if it did nothing but the commands one task needs."""
    Redis().reset()
    rates = [redis_benchmark("-t", "lpush,rpop")["RPOP"]]
    rates += [next(iter(redis_benchmark(*command).values())) for command in TASK_COMMANDS]
    Redis().reset()
    return 1 / sum(1 / r for r in rates)


def host_cost_us():
    """Median µs per task from the criterion micro-benchmark, if it has run."""
    found = {}
    for name, key in (("decode + fresh instance + math.add + encode result", "task"),
                      ("fresh instance + math.add", "instance")):
        estimates = TARGET / "criterion" / name / "new" / "estimates.json"
        if estimates.exists():
            found[key] = json.loads(estimates.read_text())["median"]["point_estimate"] / 1000
    return found


def chart(rows, path):
    """Drain rates and round trips, Celeriac beside Celery, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (drain, rtt) = plt.subplots(1, 2, figsize=(11, 4))
    labels, width = [], 0.38
    for i, (name, m) in enumerate(rows):
        for j, (key, label) in enumerate((("rate", "results stored"), ("ignored", "results ignored"))):
            x = i * 2 + j
            labels.append(f"{name}\n{label}")
            drain.bar(x - width / 2, m["celeriac"][key], width, color="#2a9d8f", label="Celeriac" if x == 0 else None)
            drain.bar(x + width / 2, m["celery"][key], width, color="#e76f51", label="Celery prefork" if x == 0 else None)
            drain.annotate(f"{m['celeriac'][key] / m['celery'][key]:.1f}×", (x, m["celeriac"][key]),
                           ha="center", va="bottom", fontsize=8)
    drain.set_xticks(range(len(labels)), labels, fontsize=8)
    drain.set_ylabel("tasks/s (-c 2)")
    drain.set_title("Drain of a pre-filled queue")
    drain.legend()
    for i, (name, m) in enumerate(rows):
        for j, kind in enumerate(("celeriac", "celery")):
            x = i + (j - 0.5) * width
            rtt.bar(x, m[kind]["p50"], width, color=("#2a9d8f", "#e76f51")[j])
            rtt.bar(x, m[kind]["own p50"], width / 2, color="#264653", label="worker's part" if i + j == 0 else None)
    rtt.set_xticks(range(len(rows)), [name for name, _ in rows])
    rtt.set_ylabel("ms")
    rtt.set_title("Round trip p50, send_task().get()")
    rtt.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rtt", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()

    rows = []
    floor = None
    for broker in (Redis(), Amqp()):
        figures = {"celeriac": [], "celery": []}
        for run in range(args.runs):
            for kind in ("celeriac", "celery"):  # alternate, so drift hits both alike
                result = one_run(kind, broker, args.tasks, args.rtt)
                result["ignored"] = drain_run(kind, broker, args.tasks, ignore_result=True)
                if kind == "celeriac" and broker.name == "redis":
                    result["io threads"] = drain_run(kind, broker, args.tasks, options=IO_THREADS)
                print(f"{broker.name} run {run + 1} {kind}: " + ", ".join(f"{k}={v:.2f}" for k, v in result.items()),
                      flush=True)
                figures[kind].append(result)
        median = {kind: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for kind, runs in figures.items()}
        rows.append((broker.name, median))
        if broker.name == "redis":
            floor = client_floor(broker, args.rtt)
            print(f"redis client floor: p50={floor['p50']:.2f} p99={floor['p99']:.2f}", flush=True)
    ceiling = redis_ceiling()
    cost = host_cost_us()
    sleep_cost = sleep0_us()
    # The "Limits" lines speak of the Redis broker, the first of `rows`.
    redis_celeriac, redis_celery = rows[0][1]["celeriac"], rows[0][1]["celery"]
    cpu_bound = os.cpu_count() * 1e6 / sum(us for key, us in redis_celeriac.items() if key.startswith("cpu "))
    binary = f"`{BIN.relative_to(TARGET)}` under the target folder" if BIN.is_relative_to(TARGET) else f"`{BIN}`"

    lines = [
        "# Benchmark: Celeriac against Celery's prefork worker",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs), `python tests/bench/bench.py --tasks {args.tasks} --rtt {args.rtt} --runs {args.runs}`.",
        f"Both workers `-c 2`, results on the same backend; medians of {args.runs} alternating runs.",
        f"Celeriac binary: {binary}.",
        "Drain: tasks/s to run a pre-filled queue of `math.add` and store every result (or, results",
        "ignored, until every task is acknowledged). Round trip: one `send_task(...).get()` from the",
        "Python Celery client at a time. Worker's part: from `send_task` returning until the result key",
        "exists, polled without sleeping, one task at a time (the rest of a round trip is the client's",
        "sending, subscribing and waiting). Chart: `RESULTS.png`.",
        "",
        "| broker | figure | Celeriac | Celery prefork | Celeriac / Celery |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, m in rows:
        c, p = m["celeriac"], m["celery"]
        lines += [
            f"| {name} | drain (tasks/s) | {c['rate']:.0f} | {p['rate']:.0f} | {c['rate'] / p['rate']:.1f}× |",
            f"| {name} | drain, results ignored (tasks/s) | {c['ignored']:.0f} | {p['ignored']:.0f} | {c['ignored'] / p['ignored']:.1f}× |",
        ]
        if "io threads" in c:
            lines.append(f"| {name} | drain, Celeriac `{' '.join(IO_THREADS)}` (tasks/s) | {c['io threads']:.0f} | "
                         f"{p['rate']:.0f} | {c['io threads'] / p['rate']:.1f}× |")
        lines += [
            f"| {name} | round trip p50 (ms) | {c['p50']:.2f} | {p['p50']:.2f} | {c['p50'] / p['p50']:.2f} |",
            f"| {name} | round trip p99 (ms) | {c['p99']:.2f} | {p['p99']:.2f} | {c['p99'] / p['p99']:.2f} |",
            f"| {name} | worker's part p50 (ms) | {c['own p50']:.2f} | {p['own p50']:.2f} | {c['own p50'] / p['own p50']:.2f} |",
            f"| {name} | worker's part p99 (ms) | {c['own p99']:.2f} | {p['own p99']:.2f} | {c['own p99'] / p['own p99']:.2f} |",
            f"| {name} | RSS idle (MiB) | {c['rss_idle']:.1f} | {p['rss_idle']:.1f} | {c['rss_idle'] / p['rss_idle']:.2f} |",
            f"| {name} | peak RSS while draining (MiB) | {c['rss_busy']:.1f} | {p['rss_busy']:.1f} | {c['rss_busy'] / p['rss_busy']:.2f} |",
        ]
    lines += [
        "",
        "CPU per task over the drain with results stored, in µs (process CPU times, the worker's start-up",
        f"included), and the rate those costs would allow if the {os.cpu_count()} cores did nothing else:",
        "",
        "| broker | worker | worker CPU | servers' CPU | all | at most (tasks/s) |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for name, m in rows:
        for kind, label in (("celeriac", "Celeriac"), ("celery", "Celery prefork")):
            figures = m[kind]
            servers = {key[4:]: us for key, us in figures.items() if key.startswith("cpu ") and key != "cpu worker"}
            total = figures["cpu worker"] + sum(servers.values())
            lines.append(
                f"| {name} | {label} | {figures['cpu worker']:.0f} | "
                + ", ".join(f"{server} {us:.0f}" for server, us in servers.items())
                + f" | {total:.0f} | {os.cpu_count() * 1e6 / total:.0f} |")
    lines += [
        "",
        "Limits, measured in the same run:",
        "",
        "- Client floor (Redis): the same client's round trip against `null_worker.py`, a loop that only",
        f"  takes each message and stores a fixed result (BRPOP, then SET + PUBLISH): p50 {floor['p50']:.2f} ms,",
        f"  p99 {floor['p99']:.2f} ms. That part of every round trip is the client's and the broker's.",
        f"- Worker's part (Redis): Celeriac's result exists {redis_celeriac['own p50']:.2f} ms after `send_task` returns (p50),",
        f"  {100 * redis_celeriac['own p50'] / redis_celeriac['p50']:.0f}% of its round trip p50; "
        f"Celery's {redis_celery['own p50']:.2f} ms, {100 * redis_celery['own p50'] / redis_celery['p50']:.0f}% of its own.",
        f"- Client sleeps: while `.get()` waits, Celery's result drainer calls `time.sleep(0)`, "
        f"{redis_celeriac['sleeps']:.0f} times",
        f"  in the median round trip (Redis, Celeriac); one costs {sleep_cost:.0f} µs in this process (the kernel's default",
        f"  timer slack is 50 µs), so about {redis_celeriac['sleeps'] * sleep_cost / 1000:.2f} ms of such a round trip is the client asleep. A result",
        "  already stored when the client first reads the key (0.2–0.3 ms after its LPUSH on this machine, seen",
        "  with `redis-cli monitor`) skips the drainer's loop and all but one of those sleeps. That short",
        f"  path was taken in {100 * floor['short']:.0f}% of the null worker's round trips, "
        f"{100 * redis_celeriac['short']:.0f}% of Celeriac's and "
        f"{100 * redis_celery['short']:.0f}% of Celery's (Redis).",
        "- Client backlog: a `.get()` that finds its result at the first read leaves its subscription's",
        "  messages unread (the subscribe and unsubscribe replies, the result's PUBLISH), and the next",
        "  `.get()` that has to wait reads through all of them, one poll and one sleep each. The slowest 1%",
        "  of round trips (Redis) slept a median of "
        f"{redis_celeriac['slowest sleeps']:.0f} times after {redis_celeriac['slowest after']:.0f} short-path round trips (Celeriac), "
        f"{floor['slowest sleeps']:.0f} times after {floor['slowest after']:.0f} (null worker),",
        f"  {redis_celery['slowest sleeps']:.0f} times after {redis_celery['slowest after']:.0f} (Celery): "
        "where results mostly come first, the p99 is this backlog's.",
        f"- Redis ceiling: {ceiling:.0f} tasks/s if Redis did nothing but the commands one task needs on the",
        "  worker's side (RPOP, ZADD, HSET, GET, SET EX, PUBLISH, ZREM, HDEL; `redis-benchmark -P 64`).",
        f"  Celeriac's Redis drain reaches {100 * redis_celeriac['rate'] / ceiling:.0f}% of it "
        f"({100 * redis_celeriac['io threads'] / ceiling:.0f}% with `{' '.join(IO_THREADS)}`), and "
        f"{100 * redis_celeriac['rate'] / cpu_bound:.0f}% of the {cpu_bound:.0f} tasks/s its and Redis's CPU a task",
        f"  would allow on {os.cpu_count()} cores (the table above): "
        + ("the CPU is the limit." if redis_celeriac["rate"] >= CPU_BOUND_SHARE * cpu_bound else
           "neither process keeps a core busy, so the drain waits (round trips, wake-ups) more than it computes."),
    ]
    if cost:
        lines.append(
            f"- Host cost per task (criterion, `host/benches/host_cost.rs`, median, `release` build): {cost.get('task', 0):.1f} µs to decode a "
            f"message, run `math.add` in a fresh instance and encode the result; {cost.get('instance', 0):.1f} µs of it the "
            "fresh instance and call.")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    chart(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
