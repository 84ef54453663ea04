"""Soak: mixed tasks for a long while, with the brokers restarting under load.

For each broker (a private redis-server, broker and results; RabbitMQ with results on
Redis) two Celeriac workers (`-c 2`) serve a stream of tasks sent by the real Celery
client: sums that succeed, divisions by zero, spins past their time limit, guest panics
and allocations past the memory cap. Every few minutes one broker restarts (the Redis
server is shut down and started again; RabbitMQ's application is stopped and started).
The client pauses sending around a restart: what is tested is the workers, not Celery's
publisher, which has no confirms.

At the end it waits for every task sent to have a ready result and reports, per broker:
tasks sent, results right, lost (no result: must be 0), wrong (a result other than the
task's own: must be 0), run more than once (at-least-once delivery across a restart
allows it; counted from the workers' logs), and the workers' RSS after warm-up, at its
highest and at the end. It exits non-zero if anything was lost or wrong or a worker died,
and writes the table to tests/soak/RESULTS.md.

    python tests/soak/soak.py --minutes 30
"""

import argparse
import collections
import datetime
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
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
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
RESULTS_DB = 13

# What is sent, how often, and what its result must be.
MIX = [
    (80, "good", lambda i: ("math.add", (i, i), {}), lambda i, m: m["status"] == "SUCCESS" and m["result"] == 2 * i),
    (8, "failing", lambda i: ("math.div", (i, 0), {}),
     lambda i, m: m["status"] == "FAILURE" and m["result"]["exc_type"] == "ZeroDivisionError"),
    (5, "timing out", lambda i: ("math.spin", (5000,), {"time_limit": 0.1}),
     lambda i, m: m["status"] == "FAILURE" and m["result"]["exc_type"] == "TimeLimitExceeded"),
    (5, "crashing", lambda i: ("math.panic", (), {}), lambda i, m: m["status"] == "FAILURE"),
    (2, "over memory", lambda i: ("math.alloc", (1024,), {}), lambda i, m: m["status"] == "FAILURE"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (FileNotFoundError, StopIteration):
        return 0


class RedisServer:
    """A private, append-only redis-server that can be restarted without losing data."""

    def __init__(self, folder):
        self.folder, self.port, self.process = folder, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis("127.0.0.1", self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise SystemExit("private redis-server did not start")

    def restart(self, down_seconds):
        redis.Redis("127.0.0.1", self.port).shutdown()  # writes the append-only file
        self.process.wait(timeout=30)
        time.sleep(down_seconds)
        self.start()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def rabbitmq_restart(down_seconds):
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    try:
        time.sleep(down_seconds)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
        subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True, timeout=120)


class Run:
    """One broker's workers, sender and bookkeeping."""

    def __init__(self, name, broker_url, backend_url, results, folder, queue, extra):
        self.name, self.broker_url, self.backend_url, self.results = name, broker_url, backend_url, results
        self.folder, self.queue, self.extra = folder, queue, extra
        self.sent = {}  # task id -> (kind, i)
        self.paused = threading.Event()
        self.workers = []
        self.rss = collections.defaultdict(list)

    def start_workers(self, count=2):
        plugins = self.folder / "plugins.d"
        plugins.mkdir(exist_ok=True)
        shutil.copy(PLUGINS / "math.wasm", plugins / "math.wasm")
        for n in range(count):
            log = open(self.folder / f"worker-{n}.log", "w")
            process = subprocess.Popen(
                [str(BIN), "--broker", self.broker_url, "--result-backend", self.backend_url, "worker",
                 "--plugins", str(plugins), "--concurrency", "2", "--http", "127.0.0.1:0", "-Q", self.queue,
                 "--hostname", f"soak-{self.name}-{n}@soak", *self.extra],
                cwd=self.folder, stdout=subprocess.DEVNULL, stderr=log,
                env=dict(os.environ, CELERIAC_CACHE_DIR=str(TARGET / "test-cache")))
            self.workers.append(process)

    def send(self, deadline, rate):
        app = Celery("soak", broker=self.broker_url, backend=self.backend_url)
        app.conf.broker_connection_retry_on_startup = True
        weights = [w for w, *_ in MIX]
        i = 0
        while time.time() < deadline:
            if self.paused.is_set():
                time.sleep(0.1)
                continue
            kind = random.choices(range(len(MIX)), weights)[0]
            name, args, options = MIX[kind][2](i)
            try:
                task_id = app.send_task(name, args, queue=self.queue, **options).id
                self.sent[task_id] = (kind, i)
            except Exception as err:  # the broker went away: this task was never accepted
                print(f"[{self.name}] send failed ({type(err).__name__}); not counted", flush=True)
                time.sleep(0.5)
            i += 1
            time.sleep(1 / rate)

    def sample_rss(self):
        for n, process in enumerate(self.workers):
            self.rss[n].append(rss_kb(process.pid))

    def settle(self, timeout):
        """Wait until every task sent has a ready result; return the metas found."""
        ids = list(self.sent)
        deadline = time.time() + timeout
        while True:
            metas = {}
            for chunk in range(0, len(ids), 1000):
                part = ids[chunk:chunk + 1000]
                for task_id, raw in zip(part, self.results.mget([f"celery-task-meta-{t}" for t in part])):
                    if raw is not None:
                        meta = json.loads(raw)
                        if meta["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                            metas[task_id] = meta
            if len(metas) == len(ids) or time.time() > deadline:
                return metas
            time.sleep(2)

    def executions(self):
        """How many times each task id ran to an outcome, from the workers' logs."""
        runs = collections.Counter()
        for n in range(len(self.workers)):
            for line in open(self.folder / f"worker-{n}.log", errors="replace"):
                if "] succeeded in " in line or "] raised unexpected" in line:
                    start = line.find("[", line.find("Task "))
                    if start >= 0:
                        runs[line[start + 1:line.find("]", start)]] += 1
        return runs

    def report(self, metas):
        runs = self.executions()
        wrong = [t for t, m in metas.items() if not MIX[self.sent[t][0]][3](self.sent[t][1], m)]
        alive = all(p.poll() is None for p in self.workers)
        rss = {n: samples for n, samples in self.rss.items() if samples}
        return {
            "broker": self.name,
            "sent": len(self.sent),
            "by kind": collections.Counter(MIX[k][1] for k, _ in self.sent.values()),
            "right": len(metas) - len(wrong),
            "lost": len(self.sent) - len(metas),
            "wrong": len(wrong),
            "wrong examples": [(t, metas[t]) for t in wrong[:3]],
            "runs logged": sum(runs[t] for t in self.sent),
            "run more than once": sum(1 for t in self.sent if runs[t] > 1),
            "workers alive": alive,
            "rss start": [s[0] // 1024 for s in rss.values()],
            "rss max": [max(s) // 1024 for s in rss.values()],
            "rss end": [s[-1] // 1024 for s in rss.values()],
        }

    def stop(self):
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=40, help="tasks per second per broker")
    parser.add_argument("--restart-every", type=float, default=300, help="seconds between broker restarts")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="celeriac-soak-"))
    server = RedisServer(folder / "redis")
    (folder / "redis").mkdir()
    server.start()
    results_db = redis.Redis("127.0.0.1", 6379, db=RESULTS_DB)
    results_db.flushdb()
    queue = f"soak-{os.getpid()}"
    lease = ("--broker-transport-option", "visibility_timeout=30")
    runs = [
        Run("redis", server.url, server.url, redis.Redis("127.0.0.1", server.port), folder / "redis-run", queue, lease),
        Run("rabbitmq", AMQP_URL, f"redis://127.0.0.1:6379/{RESULTS_DB}", results_db, folder / "amqp-run", queue, ()),
    ]
    restarts = {"redis": lambda: server.restart(3), "rabbitmq": lambda: rabbitmq_restart(3)}
    started = time.time()
    deadline = started + args.minutes * 60
    try:
        for run in runs:
            run.folder.mkdir()
            run.start_workers()
        time.sleep(5)
        senders = [threading.Thread(target=run.send, args=(deadline, args.rate), daemon=True) for run in runs]
        for sender in senders:
            sender.start()
        next_restart, turn, warm = started + args.restart_every, 0, started + 30
        restarted = collections.Counter()
        while time.time() < deadline:
            time.sleep(5)
            if time.time() > warm:
                for run in runs:
                    run.sample_rss()
            if time.time() >= next_restart and time.time() < deadline - 60:
                run = runs[turn % len(runs)]
                turn += 1
                print(f"[{run.name}] restarting the broker at {time.time() - started:.0f} s", flush=True)
                run.paused.set()
                time.sleep(2)  # what was sent is in the broker before it stops
                restarts[run.name]()
                restarted[run.name] += 1
                run.paused.clear()
                next_restart = time.time() + args.restart_every
        for sender in senders:
            sender.join(timeout=30)
        reports = []
        for run in runs:
            metas = run.settle(timeout=300)
            run.sample_rss()
            reports.append(run.report(metas) | {"restarts": restarted[run.name]})
    finally:
        for run in runs:
            run.stop()
        server.stop()
        try:
            with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
                conn.channel().queue_delete(queue)
        except Exception:
            pass
    write_results(args, reports, time.time() - started)
    for report in reports:
        print(json.dumps(report, default=str), flush=True)
    failed = any(r["lost"] or r["wrong"] or not r["workers alive"] for r in reports)
    if not failed:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"logs kept in {folder}", flush=True)
    sys.exit(1 if failed else 0)


def write_results(args, reports, elapsed):
    lines = [
        "# Soak results",
        "",
        f"`make soak` ({args.minutes:g} minutes, {args.rate:g} tasks/s per broker, a broker restart every "
        f"{args.restart_every:g} s, alternating), {datetime.date.today().isoformat()}, "
        f"{os.cpu_count()} cores; {elapsed / 60:.1f} minutes in all with the final drain.",
        "",
        "| broker | sent | right | lost | wrong | runs logged | run more than once | broker restarts "
        "| workers alive | RSS after warm-up (MiB) | RSS highest (MiB) | RSS at the end (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for r in reports:
        lines.append(
            f"| {r['broker']} | {r['sent']} | {r['right']} | {r['lost']} | {r['wrong']} | {r['runs logged']} "
            f"| {r['run more than once']} "
            f"| {r['restarts']} | {'yes' if r['workers alive'] else 'NO'} | {', '.join(map(str, r['rss start']))} "
            f"| {', '.join(map(str, r['rss max']))} | {', '.join(map(str, r['rss end']))} |")
    lines += ["", "Tasks sent, by kind: " + "; ".join(
        f"{r['broker']}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["by kind"].items())) for r in reports), ""]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
