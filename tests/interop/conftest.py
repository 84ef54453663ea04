"""A real Celeriac worker for the interop tests, and a real Celery client app.

Each test module gets its own folder with its own SQLite file, so tests never see each
other's messages. `make test` sets CELERIAC_BIN and CELERIAC_PLUGIN_DIR.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from celery import Celery

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = Path(os.environ.get("CELERIAC_BIN", TARGET / "release" / "celeriac"))
PLUGINS = Path(os.environ.get("CELERIAC_PLUGIN_DIR", TARGET / "plugins"))


class Worker:
    def __init__(self, folder: Path):
        self.folder = folder
        self.db = folder / "celeriac.db"
        self.plugins = folder / "plugins.d"
        self.plugins.mkdir()
        shutil.copy(PLUGINS / "math.wasm", self.plugins / "math.wasm")
        self.log_path = folder / "worker.log"
        self.process = None

    @property
    def url(self):
        # SQLAlchemy's spelling: four slashes for an absolute path.
        return f"sqlite:///{self.db}"

    def start(self):
        env = dict(os.environ, CELERIAC_CACHE_DIR=str(TARGET / "test-cache"))
        env.pop("CELERY_BROKER_URL", None)
        env.pop("CELERY_RESULT_BACKEND", None)
        self.process = subprocess.Popen(
            [str(BIN), "--broker", self.url, "--result-backend", self.url,
             "worker", "--plugins", str(self.plugins), "-c", "2"],
            cwd=self.folder, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
        )
        self.wait_for_log("celeriac worker ready")

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

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("celeriac"))
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def app(worker):
    """A Celery client configured exactly as the README tells users to."""
    client = Celery(
        "interop",
        broker=f"sqla+sqlite:///{worker.db}",
        backend=f"db+sqlite:///{worker.db}",
    )
    yield client
    client.close()
