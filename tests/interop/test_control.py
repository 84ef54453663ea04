"""Remote control and events from the real Celery tools: `celery inspect`, `celery control`,
`app.control`, and `app.events.Receiver`, against Celeriac on Redis and on RabbitMQ. The
status port's `/inspect` and `/events` serve the same on every broker.
"""

import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import amqp
import pytest
import redis
from celery.exceptions import TaskRevokedError

from conftest import REDIS_HOST, REDIS_PORT, celery_app, eventually

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
TIMEOUT = 30


@pytest.fixture(params=["redis", "amqp"])
def broker(request, db):
    """A broker URL, a queue of the test's own, and the matching result backend."""
    queue = f"celeriac-control-{uuid.uuid4()}"
    backend = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    if request.param == "redis":
        yield backend, queue, backend
        return
    yield AMQP, queue, backend
    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
        channel = conn.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(queue)


@pytest.fixture
def node():
    return f"celeriac-{uuid.uuid4().hex[:8]}@test"


def celery_cli(broker_url, *args):
    """Run the real `celery` command line; its JSON output, replies merged by node
    (`inspect` prints one object, `control` a list of one-key objects)."""
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-b", broker_url, *args, "--json", "--timeout", "5"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    replies = json.loads(out.stdout.strip().splitlines()[-1])
    if isinstance(replies, list):
        return {node: reply for one in replies for node, reply in one.items()}
    return replies


def test_celery_inspect_sees_the_worker(broker, node, make_worker):
    url, queue, backend = broker
    make_worker(url, backend, "-Q", queue, "-n", node)
    assert celery_cli(url, "inspect", "ping", "-d", node) == {node: {"ok": "pong"}}

    registered = celery_cli(url, "inspect", "registered", "-d", node)[node]
    assert "math.add" in registered and "math.spin" in registered

    app = celery_app(url, backend)
    assert app.send_task("math.add", (2, 3), queue=queue).get(timeout=TIMEOUT) == 5
    stats = celery_cli(url, "inspect", "stats", "-d", node)[node]
    assert stats["total"] == {"math.add": 1}
    assert stats["pool"]["max-concurrency"] == 2
    assert stats["broker"]["transport"] == ("redis" if url.startswith("redis") else "amqp")
    assert "guest" not in json.dumps(stats["broker"]) or stats["broker"]["userid"] == "guest"

    queues = celery_cli(url, "inspect", "active_queues", "-d", node)[node]
    assert [q["name"] for q in queues] == [queue]

    spinning = app.send_task("math.spin", (3000,), queue=queue)
    active = eventually(lambda: celery_cli(url, "inspect", "active", "-d", node)[node])
    assert [task["id"] for task in active] == [spinning.id]
    assert active[0]["name"] == "math.spin" and active[0]["args"] == [3000]
    assert spinning.get(timeout=TIMEOUT) == 3000

    # app.control.inspect() is what Flower calls.
    replies = app.control.inspect(destination=[node], timeout=5).stats()
    assert replies[node]["total"] == {"math.add": 1, "math.spin": 1}
    app.close()


def test_celery_control_rate_limit_revoke_terminate_and_shutdown(broker, node, make_worker):
    url, queue, backend = broker
    worker = make_worker(url, backend, "-Q", queue, "-n", node)
    app = celery_app(url, backend)

    reply = celery_cli(url, "control", "rate_limit", "math.add", "2/s", "-d", node)
    assert reply == {node: {"ok": "new rate limit set successfully"}}
    started = time.time()
    results = [app.send_task("math.add", (i, i), queue=queue) for i in range(5)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [0, 2, 4, 6, 8]
    assert time.time() - started >= 1.5, "2/s spaces five tasks over two seconds"
    assert celery_cli(url, "control", "rate_limit", "math.nope", "2/s", "-d", node) == {
        node: {"error": "unknown task"}}

    # Revoked while it waits for its ETA: never runs, stored as REVOKED.
    later = app.send_task("math.add", (1, 1), queue=queue, countdown=3)
    assert eventually(lambda: app.control.inspect(destination=[node], timeout=2).scheduled()[node])
    app.control.revoke(later.id, destination=[node])
    with pytest.raises(TaskRevokedError):
        later.get(timeout=TIMEOUT)
    revoked = celery_cli(url, "inspect", "revoked", "-d", node)[node]
    assert later.id in revoked

    # Terminated while running: stops at once.
    spinning = app.send_task("math.spin", (60000,), queue=queue)
    assert eventually(lambda: app.control.inspect(destination=[node], timeout=2).active()[node])
    begun = time.time()
    app.control.revoke(spinning.id, terminate=True, destination=[node])
    with pytest.raises(TaskRevokedError):
        spinning.get(timeout=TIMEOUT)
    assert time.time() - begun < 10

    # Like Celery's worker, it stops without replying.
    app.control.shutdown(destination=[node])
    worker.process.wait(timeout=TIMEOUT)
    assert worker.process.returncode == 0
    app.close()


def test_an_events_receiver_sees_the_worker_and_its_tasks(broker, node, make_worker):
    url, queue, backend = broker
    app = celery_app(url, backend)
    seen = []
    ready = threading.Event()

    def listen():
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": seen.append})
            ready.set()
            receiver.capture(limit=None, timeout=TIMEOUT)

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    time.sleep(0.5)
    make_worker(url, backend, "-Q", queue, "-n", node, "-E", "--result-extended")
    ok = app.send_task("math.add", (2, 3), queue=queue)
    bad = app.send_task("math.div", (1, 0), queue=queue)
    assert ok.get(timeout=TIMEOUT) == 5
    with pytest.raises(ZeroDivisionError):
        bad.get(timeout=TIMEOUT)

    def of(kind, uuid=None):
        return [e for e in seen if e["type"] == kind and e.get("uuid", uuid) == uuid]

    assert eventually(lambda: of("task-failed", bad.id) and of("worker-heartbeat"), timeout=10)
    online = of("worker-online")[0]
    assert online["hostname"] == node
    heartbeat = of("worker-heartbeat")[-1]
    for field in ("freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys",
                  "clock", "pid", "utcoffset", "timestamp"):
        assert field in heartbeat, field
    assert heartbeat["freq"] == 2.0
    received = of("task-received", ok.id)[0]
    assert received["name"] == "math.add" and received["args"] == "(2, 3)"
    assert of("task-started", ok.id)
    succeeded = of("task-succeeded", ok.id)[0]
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    # Beyond Celery: what the task used, in the event and in the extended result meta.
    # The CPU time counts at least the task's instance and call, never nothing.
    assert succeeded["cpu_time"] > 0 and succeeded["peak_memory"] >= 65536
    usage = json.loads(redis.Redis.from_url(backend).get(f"celery-task-meta-{ok.id}"))["usage"]
    assert usage["peak_memory"] == succeeded["peak_memory"] and usage["runtime"] > 0
    assert usage["cpu_time"] == succeeded["cpu_time"]
    assert of("task-failed", bad.id)[0]["exception"].startswith("ZeroDivisionError(")

    # The way Flower and `celery events` decide a worker is online.
    state = app.events.State()
    for event in seen:
        state.event(dict(event))
    assert state.workers[node].alive
    assert state.tasks[ok.id].state == "SUCCESS"
    app.close()


def test_the_status_port_inspects_and_streams_events_on_any_broker(tmp_path, make_worker):
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    worker = make_worker(url, url)
    base = worker.status_url()
    with urllib.request.urlopen(f"{base}/inspect/ping", timeout=5) as response:
        assert json.load(response) == {worker_name(worker): {"ok": "pong"}}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/inspect/shutdown", timeout=5)
    assert refused.value.code == 404

    events = []

    def stream():
        with urllib.request.urlopen(f"{base}/events", timeout=30) as response:
            for line in response:
                if line.startswith(b"data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1]["type"] == "task-succeeded":
                        return

    threading.Thread(target=stream, daemon=True).start()
    time.sleep(0.5)
    app = celery_app(f"sqla+sqlite:///{tmp_path / 'celeriac.db'}", f"db+sqlite:///{tmp_path / 'celeriac.db'}")
    result = app.send_task("math.add", (20, 22))
    assert result.get(timeout=TIMEOUT) == 42
    assert eventually(lambda: any(e["type"] == "task-succeeded" for e in events), timeout=10)
    kinds = [e["type"] for e in events if e.get("uuid") == result.id]
    assert kinds == ["task-received", "task-started", "task-succeeded"]

    with urllib.request.urlopen(f"{base}/inspect/stats", timeout=5) as response:
        stats = json.load(response)[worker_name(worker)]
    assert stats["total"] == {"math.add": 1}
    app.close()


def worker_name(worker):
    """The node name a worker logged at start."""
    worker.wait_for_log("celeriac worker ready")
    line = next(l for l in worker.log().splitlines() if "celeriac worker ready" in l)
    return line.split("hostname=", 1)[1].split()[0]


def test_revoked_ids_survive_a_restart_with_a_state_file(db, node, tmp_path, make_worker):
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    state = tmp_path / "worker.state"
    first = make_worker(url, url, "-n", node, "--statedb", str(state))
    app = celery_app(url, url)
    doomed = str(uuid.uuid4())
    assert celery_cli(url, "control", "revoke", doomed, "-d", node) == {
        node: {"ok": f"tasks {{'{doomed}'}} flagged as revoked"}}
    first.stop()

    make_worker(url, url, "-n", node, "--statedb", str(state))
    with pytest.raises(TaskRevokedError):
        app.send_task("math.add", (1, 2), task_id=doomed).get(timeout=TIMEOUT)
    assert app.send_task("math.add", (1, 2)).get(timeout=TIMEOUT) == 3
    app.close()


def test_json_logs_name_the_task_and_its_plugin_on_every_task_line(tmp_path, make_worker):
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    worker = make_worker(url, url, "--log-format", "json")
    app = celery_app(f"sqla+sqlite:///{tmp_path / 'celeriac.db'}", f"db+sqlite:///{tmp_path / 'celeriac.db'}")
    ok = app.send_task("math.add", (1, 2))
    bad = app.send_task("math.div", (1, 0))
    assert ok.get(timeout=TIMEOUT) == 3
    with pytest.raises(ZeroDivisionError):
        bad.get(timeout=TIMEOUT)
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    task_lines = [line for line in lines if line.get("task_id") in (ok.id, bad.id)]
    assert len(task_lines) == 4, task_lines  # received and finished, twice
    for line in task_lines:
        assert line["plugin"] == "math" and line["task"] in ("math.add", "math.div"), line
    app.close()


def test_consumers_and_pool_change_at_run_time(broker, node, make_worker):
    url, queue, backend = broker
    extra = f"{queue}-extra"
    make_worker(url, backend, "-Q", queue, "-n", node)
    app = celery_app(url, backend)
    try:
        assert celery_cli(url, "control", "add_consumer", extra, "-d", node) == {
            node: {"ok": f"add consumer {extra}"}}
        assert app.send_task("math.add", (4, 4), queue=extra).get(timeout=TIMEOUT) == 8
        queues = celery_cli(url, "inspect", "active_queues", "-d", node)[node]
        assert sorted(q["name"] for q in queues) == sorted([queue, extra])

        assert celery_cli(url, "control", "cancel_consumer", extra, "-d", node) == {
            node: {"ok": f"no longer consuming from {extra}"}}
        # At once: a receive already waiting on the cancelled queue must hand this back.
        waiting = app.send_task("math.add", (5, 5), queue=extra)
        queues = celery_cli(url, "inspect", "active_queues", "-d", node)[node]
        assert [q["name"] for q in queues] == [queue]
        time.sleep(1.5)
        assert waiting.state == "PENDING", "a cancelled queue is not consumed"

        assert celery_cli(url, "control", "pool_grow", "2", "-d", node) == {node: {"ok": "pool will grow"}}
        assert celery_cli(url, "inspect", "stats", "-d", node)[node]["pool"]["max-concurrency"] == 4
        spins = [app.send_task("math.spin", (4000,), queue=queue) for _ in range(4)]
        inspect = app.control.inspect(destination=[node], timeout=2)
        assert eventually(lambda: len((inspect.active() or {}).get(node, [])) == 4), "four run at once"
        assert [s.get(timeout=TIMEOUT) for s in spins] == [4000] * 4
        assert celery_cli(url, "control", "pool_shrink", "3", "-d", node) == {node: {"ok": "pool will shrink"}}
        assert celery_cli(url, "inspect", "stats", "-d", node)[node]["pool"]["max-concurrency"] == 1
    finally:
        app.close()
        if url == AMQP:
            with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
                channel = conn.channel()
                channel.queue_delete(extra)
                channel.exchange_delete(extra)


def test_celeriac_inspect_and_control_are_the_same_client(broker, node, make_worker):
    from conftest import BIN
    url, queue, backend = broker
    make_worker(url, backend, "-Q", queue, "-n", node)

    def celeriac(*args):
        out = subprocess.run([str(BIN), "--broker", url, *args, "-d", node, "--json", "-t", "5"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)

    assert celeriac("inspect", "ping") == {node: {"ok": "pong"}}
    assert "math.add" in celeriac("inspect", "registered")[node]
    assert celeriac("control", "rate_limit", "math.add", "100/s") == {
        node: {"ok": "new rate limit set successfully"}}
    assert celeriac("inspect", "conf")[node]["task_queues"] == [queue]


def test_celery_events_dump_prints_the_worker(broker, node, make_worker):
    url, queue, backend = broker
    dump = subprocess.Popen([sys.executable, "-m", "celery", "-b", url, "events", "--dump"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        make_worker(url, backend, "-Q", queue, "-n", node, "-E")
        app = celery_app(url, backend)
        result = app.send_task("math.add", (2, 3), queue=queue)
        assert result.get(timeout=TIMEOUT) == 5
        time.sleep(3)
        app.close()
    finally:
        dump.terminate()
    output = dump.communicate(timeout=10)[0]
    # evdump's words for worker-online, task-succeeded and worker-heartbeat.
    assert f"{node} [" in output and "] started: " in output, output
    assert f"task succeeded: math.add({result.id})" in output and "] heartbeat: " in output, output
