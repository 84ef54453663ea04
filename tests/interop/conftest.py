"""Real Celeriac workers for the interop tests, and real Celery client apps.

Each test module gets its own folder (and SQLite file, or Redis database number), so
tests never see each other's messages. `make test` sets CELERIAC_BIN and
CELERIAC_PLUGIN_DIR.
"""

import itertools
import json
import os
import sys
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

ROOT = Path(__file__).resolve().parents[2]
# The client helpers (`celeriac_celery`) that the tests use as a user would.
sys.path.insert(0, str(ROOT / "sdk" / "celery"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = Path(os.environ.get("CELERIAC_BIN", TARGET / "release" / "celeriac"))
PLUGINS = Path(os.environ.get("CELERIAC_PLUGIN_DIR", TARGET / "plugins"))
# Debian 11's Redis 6.0, which `make services` unpacks under the target folder.
REDIS_6_0 = Path(os.environ.get("CELERIAC_REDIS_6_0", TARGET / "redis-6.0" / "redis-server"))
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# Database 14 is the benchmarks' (tests/bench), which flush it: a bench run beside the tests
# would otherwise take and wipe a test's messages.
_redis_databases = itertools.cycle([n for n in range(1, 16) if n != 14])


class Worker:
    """One `celeriac worker` process on a broker and backend."""

    count = 0

    def __init__(self, folder: Path, broker: str, backend: str, *extra: str, env=None):
        Worker.count += 1
        self.env = env or {}
        self.folder = folder
        self.broker = broker
        self.backend = backend
        self.extra = list(extra)
        if "--concurrency" not in self.extra:
            self.extra += ["--concurrency", "2"]
        if "--http" not in self.extra:
            # Workers of concurrent tests must not fight over the default port.
            self.extra += ["--http", "127.0.0.1:0"]
        self.plugins = folder / "plugins.d"
        self.plugins.mkdir(exist_ok=True)
        if not (self.plugins / "math.wasm").exists():
            shutil.copy(PLUGINS / "math.wasm", self.plugins / "math.wasm")
        self.log_path = folder / f"worker-{Worker.count}.log"
        self.process = None

    def start(self):
        env = dict(os.environ, CELERIAC_CACHE_DIR=str(TARGET / "test-cache"), **self.env)
        env.pop("CELERY_BROKER_URL", None)
        env.pop("CELERY_RESULT_BACKEND", None)
        self.process = subprocess.Popen(
            [str(BIN), "--broker", self.broker, "--result-backend", self.backend,
             "worker", "--plugins", str(self.plugins), *self.extra],
            cwd=self.folder, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
        )
        self.wait_for_log("celeriac worker ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for_log(self, text, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log():
                return
            assert self.process.poll() is None, f"worker exited:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"worker never logged {text!r}:\n{self.log()}")

    def status_url(self):
        """The base URL of the worker's status port, from its log."""
        self.wait_for_log("status port on http://")
        return "http://" + self.log().split("status port on http://", 1)[1].split()[0]

    def kill(self):
        """SIGKILL: no chance to hand anything back."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def make_worker(request, tmp_path):
    """Start workers on demand; all are stopped at the end of the test. When the test
    failed, their logs are printed: CI keeps no temporary folders."""
    started = []

    def make(broker, backend, *extra, env=None):
        worker = Worker(tmp_path, broker, backend, *extra, env=env).start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for worker in started:
            print(f"\n----- {worker.log_path.name} ({worker.broker}) -----\n{worker.log()[-20000:]}")
        for backend in sorted({w.backend for w in started if w.backend.startswith("redis://")}):
            print(f"\n----- results stored in {backend} -----\n{stored_states(backend)}")


def stored_states(url):
    """`task id: state` of every result in a Redis backend: tells a result the worker never
    stored from one the client did not see."""
    client = redis.Redis.from_url(url)
    lines = []
    for key in sorted(client.scan_iter("celery-task-meta-*", count=1000)):
        meta = client.get(key)
        try:
            state = json.loads(meta).get("status") if meta else "(expired)"
        except (ValueError, AttributeError):
            state = f"(not a result meta: {meta[:80]!r})"
        lines.append(f"{key.decode().removeprefix('celery-task-meta-')}: {state}")
    return "\n".join(lines) or "(none)"


def stored_results(client, ids, timeout=60):
    """Wait until Redis holds a result for every id, then return the metas found (read
    straight from Redis, so a client reconnecting after a fault cannot hide a loss)."""
    deadline = time.time() + timeout
    while True:
        metas = client.mget([f"celery-task-meta-{i}" for i in ids])
        if all(m is not None for m in metas) or time.time() > deadline:
            return [json.loads(m) for m in metas if m is not None]
        time.sleep(0.2)


def celery_app(broker, backend, **conf):
    """A Celery client configured exactly as the README tells users to."""
    app = Celery("interop", broker=broker, backend=backend)
    app.conf.update(**conf)
    return app


@pytest.fixture
def db():
    """A Redis database number of the test's own, flushed before and after."""
    number = next(_redis_databases)
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=number)
    client.flushdb()
    yield number
    client.flushdb()


@pytest.fixture(scope="module")
def sqlite_worker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("celeriac")
    url = f"sqlite:///{folder / 'celeriac.db'}"
    worker = Worker(folder, url, url).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def sqlite_app(sqlite_worker):
    db = sqlite_worker.folder / "celeriac.db"
    app = celery_app(f"sqla+sqlite:///{db}", f"db+sqlite:///{db}")
    yield app
    app.close()


def received_ids(worker, task="math.spin"):
    """Ids of the tasks a worker received, in order, from its log."""
    marker = f"Task {task}["
    return [line.split(marker, 1)[1].split("]", 1)[0]
            for line in worker.log().splitlines() if marker in line and "] received" in line]


def free_port():
    """A loopback port nothing listens on, for a private server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, server, what, timeout, why=lambda: ""):
    """Wait until a private `server` process accepts connections on `port`; fail with
    `what` (and `why()`, e.g. its log) if it exits or takes longer than `timeout` s."""
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert server.poll() is None and time.time() < deadline, f"{what} did not start{why()}"
            time.sleep(0.1)


def start_redis(port, folder, server="redis-server"):
    """A private redis-server (append-only, so a restart keeps its data) on `port`."""
    process = subprocess.Popen(
        [str(server), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis("127.0.0.1", port)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    raise AssertionError("private redis-server did not start")


def eventually(condition, timeout=30):
    """Wait for `condition()` to hold (acks follow results by a moment); its last value."""
    deadline = time.time() + timeout
    while not (value := condition()) and time.time() < deadline:
        time.sleep(0.05)
    return value
