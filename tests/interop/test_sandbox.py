"""The sandbox, probed from Python Celery with `plugins/probe`: without a manifest every
attempt to reach files, the environment or the network fails cleanly as the task's
failure, runaway tasks are stopped, output is capped, and the worker goes on; with a
manifest, exactly what is granted becomes reachable.
"""

import shutil
import socket
import threading

import pytest
from billiard.exceptions import TimeLimitExceeded

from conftest import PLUGINS, REDIS_HOST, REDIS_PORT, celery_app, eventually

TIMEOUT = 60


def url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def probe_worker(tmp_path, db, make_worker, manifest=None):
    plugins = tmp_path / "plugins.d"
    plugins.mkdir(exist_ok=True)
    shutil.copy(PLUGINS / "probe.wasm", plugins / "probe.wasm")
    if manifest:
        (plugins / "probe.toml").write_text(manifest)
    worker = make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))

    def call(task, *args, **options):
        return app.send_task(f"probe.{task}", args, **options).get(timeout=TIMEOUT)

    return worker, app, call


def still_healthy(worker, app):
    assert worker.process.poll() is None, "the worker died"
    assert app.send_task("math.add", (1, 2)).get(timeout=TIMEOUT) == 3


def test_without_a_manifest_nothing_outside_the_sandbox_is_reachable(tmp_path, db, make_worker):
    worker, app, call = probe_worker(tmp_path, db, make_worker)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    for task, args in [
        ("read_file", ("/etc/passwd",)),
        ("read_file", (str(secret),)),
        ("read_file", (str(worker.log_path),)),
        ("list_dir", ("/",)),
        ("list_dir", (".",)),
        ("write_file", (str(tmp_path / "planted.txt"), "x")),
        ("connect", (f"{REDIS_HOST}:{REDIS_PORT}",)),
    ]:
        with pytest.raises(PermissionError):
            call(task, *args)
    assert not (tmp_path / "planted.txt").exists()
    assert call("environment") == {}, "the worker's environment leaked into the plugin"
    still_healthy(worker, app)


def test_runaway_tasks_are_stopped_and_the_worker_goes_on(tmp_path, db, make_worker):
    worker, app, call = probe_worker(tmp_path, db, make_worker)
    with pytest.raises(TimeLimitExceeded):
        call("spin_forever", time_limit=1)
    with pytest.raises(MemoryError):
        call("hog_memory")
    with pytest.raises(Exception) as crash:
        call("recurse", 10**9)
    assert type(crash.value).__name__ == "WasmTrap" and "stack" in str(crash.value)
    # 100 MB does not fit in the default 128 MB instance along with its JSON copy.
    with pytest.raises(MemoryError):
        call("big_result", 100)
    still_healthy(worker, app)


def test_results_state_updates_and_logs_are_capped(tmp_path, db, make_worker):
    worker, app, call = probe_worker(tmp_path, db, make_worker, "[limits]\nmemory_mb = 512\nmax_result_mb = 8\n")
    with pytest.raises(Exception) as too_big:
        call("big_result", 100)
    assert type(too_big.value).__name__ == "ResultTooLarge"
    assert len(call("big_result", 1)) == 1 << 20
    before = worker.log_path.stat().st_size
    assert call("flood_log", 10_000, 1000) == 10_000  # 10 MB of log asked for
    grown = worker.log_path.stat().st_size - before
    assert grown < 2 << 20, f"the log grew by {grown} bytes"
    assert "further lines are dropped" in worker.log()
    assert call("garbage_to_host") is True
    assert "ignoring update-state" in worker.log()
    still_healthy(worker, app)


@pytest.fixture
def listener():
    """A TCP port on 127.0.0.1 that accepts connections, and one that is not granted."""
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    stop = threading.Event()

    def accept(server):
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                pass

    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield [f"127.0.0.1:{s.getsockname()[1]}" for s in servers]
    stop.set()
    for server in servers:
        server.close()


def test_a_manifest_grants_exactly_what_it_names(tmp_path, db, make_worker, listener):
    granted, other = listener
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note.txt").write_text("hello from the host")
    (tmp_path / "outside.txt").write_text("not granted")
    manifest = f"""
[grants]
env = {{ GREETING = "hi" }}
dirs = [{{ host = "{shared}", guest = "/data", mode = "ro" }}]
connect = ["{granted}"]
"""
    worker, app, call = probe_worker(tmp_path, db, make_worker, manifest)
    assert call("read_file", "/data/note.txt") == "hello from the host"
    assert call("list_dir", "/data") == ["note.txt"]
    assert call("environment") == {"GREETING": "hi"}
    assert call("connect", granted) == f"connected to {granted}"
    for task, args in [
        ("write_file", ("/data/new.txt", "x")),  # read-only grant
        ("read_file", ("/data/../outside.txt",)),
        ("read_file", (str(tmp_path / "outside.txt"),)),
        ("read_file", ("/etc/passwd",)),
        ("connect", (other,)),
        ("connect", (f"{REDIS_HOST}:{REDIS_PORT}",)),
    ]:
        with pytest.raises(PermissionError):
            call(task, *args)
    assert not (shared / "new.txt").exists()
    still_healthy(worker, app)


def test_each_task_gets_a_fresh_instance_unless_the_manifest_asks_for_reuse(tmp_path, db, make_worker):
    worker = make_worker(url(db), url(db), "--concurrency", "1")
    app = celery_app(url(db), url(db))
    count = lambda: app.send_task("math.counter").get(timeout=TIMEOUT)  # noqa: E731
    assert [count() for _ in range(3)] == [1, 1, 1], "state leaked from one task to the next"
    (worker.plugins / "math.toml").write_text("reuse_instance = true\n")
    assert eventually(lambda: worker.log().count("plugin loaded plugin=math") >= 2)
    assert [count() for _ in range(3)] == [1, 2, 3], "the kept instance was not reused"
    # A task that traps takes its instance with it.
    with pytest.raises(Exception):
        app.send_task("math.panic").get(timeout=TIMEOUT)
    assert count() == 1


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_memory_caps_hold_under_concurrency(tmp_path, db, make_worker):
    cap_mb, slots = 64, 2
    worker, app, call = probe_worker(tmp_path, db, make_worker, f"[limits]\nmemory_mb = {cap_mb}\n")
    assert call("environment") == {}  # loaded and warm
    idle = rss_mib(worker.process.pid)
    results = [app.send_task("probe.hog_memory") for _ in range(2 * slots)]
    peak = idle
    while not all(r.ready() for r in results):
        peak = max(peak, rss_mib(worker.process.pid))
    for result in results:
        with pytest.raises(MemoryError):
            result.get(timeout=TIMEOUT)
    # Each running instance may hold its cap; the stated overhead covers the host's own
    # buffers and the instances' stacks and tables.
    overhead_mb = 48
    print(f"idle {idle:.1f} MiB, peak {peak:.1f} MiB")
    assert peak <= idle + slots * cap_mb + overhead_mb, f"RSS went from {idle:.1f} to {peak:.1f} MiB"
    still_healthy(worker, app)
