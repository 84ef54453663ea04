"""Python Celery clients against Celeriac on the real Redis (127.0.0.1:6379).

Each test takes a Redis database number of its own and flushes it, so tests do not see
each other's keys. Redis restarting under load is in test_reliability.py.
"""

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis
from billiard.exceptions import TimeLimitExceeded
from celery.exceptions import NotRegistered, TaskRevokedError

from celery import chord

from conftest import BIN, REDIS_6_0, REDIS_HOST, REDIS_PORT, celery_app, eventually, free_port, received_ids, start_redis

TIMEOUT = 60
def url(db, port=REDIS_PORT):
    return f"redis://{REDIS_HOST}:{port}/{db}"


def test_a_thousand_tasks_and_the_right_exceptions(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    results = [app.send_task("math.add", (i, i)) for i in range(1000)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(1000)]
    with pytest.raises(ZeroDivisionError):
        app.send_task("math.div", (1, 0)).get(timeout=TIMEOUT)
    with pytest.raises(TimeLimitExceeded):
        app.send_task("math.spin", (60000,), time_limit=1).get(timeout=TIMEOUT)
    with pytest.raises(NotRegistered):
        app.send_task("math.nope", ()).get(timeout=TIMEOUT)
    with pytest.raises(TypeError):
        app.send_task("math.add", (1,)).get(timeout=TIMEOUT)
    # Results expire after a day, as Celery's do.
    ttl = redis.Redis(REDIS_HOST, REDIS_PORT, db=db).ttl(f"celery-task-meta-{results[0].id}")
    assert 86000 < ttl <= 86400


def test_an_expired_task_is_stored_revoked_and_not_run(db, make_worker):
    worker = make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    expired = app.send_task("math.add", (1, 2), expires=datetime.now(timezone.utc) - timedelta(seconds=5))
    with pytest.raises(TaskRevokedError, match="expired"):
        expired.get(timeout=TIMEOUT)
    assert expired.state == "REVOKED"
    assert f"Task math.add[{expired.id}] expired; not running it" in worker.log()
    assert f"Task math.add[{expired.id}] succeeded" not in worker.log()
    assert app.send_task("math.add", (2, 3)).get(timeout=TIMEOUT) == 5


def test_a_killed_worker_loses_nothing(db, make_worker):
    lease = ("--broker-transport-option", "visibility_timeout=5")
    first = make_worker(url(db), url(db), *lease)
    app = celery_app(url(db), url(db))
    results = [app.send_task("math.spin", (100,)) for _ in range(60)]
    first.wait_for_log("Task math.spin[")
    time.sleep(0.5)
    first.kill()
    make_worker(url(db), url(db), *lease)
    assert [r.get(timeout=TIMEOUT) for r in results] == [100] * 60
    assert redis.Redis(REDIS_HOST, REDIS_PORT, db=db).hlen("unacked") == 0


def test_kombus_own_sweeper_restores_what_a_killed_worker_held(db, make_worker):
    """Celeriac records a message under a tag of its own; a Python worker's sweep (kombu's
    `restore_visible`) reads that record as its own and puts the message back as published."""
    first = make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db)
    result = app.send_task("math.spin", (3000,))
    assert eventually(lambda: client.hlen("unacked") == 1), first.log()
    [entry] = client.hvals("unacked")
    taken = json.loads(entry)[0]
    first.kill()
    time.sleep(1.5)
    with app.connection_for_write() as connection:
        connection.transport_options["visibility_timeout"] = 1
        connection.default_channel.qos.restore_visible()
    assert client.hlen("unacked") == 0
    [restored] = [json.loads(m) for m in client.lrange("celery", 0, -1)]
    assert restored["headers"]["redelivered"] is True
    assert restored["properties"]["delivery_tag"] == taken["properties"]["delivery_tag"]
    assert restored["body"] == taken["body"]
    make_worker(url(db), url(db))
    assert result.get(timeout=TIMEOUT) == 3000


def test_a_task_an_idle_worker_took_is_recorded_while_it_runs(db, make_worker):
    """An idle worker takes a message by BRPOP and starts its task while the unacked
    record is written; the record must land all the same, so a kill loses nothing."""
    lease = ("--broker-transport-option", "visibility_timeout=3")
    first = make_worker(url(db), url(db), *lease)
    app = celery_app(url(db), url(db))
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db)
    time.sleep(0.5)  # the worker waits in BRPOP
    result = app.send_task("math.spin", (3000,))
    first.wait_for_log(f"Task math.spin[{result.id}]")
    assert eventually(lambda: client.hlen("unacked") == 1), first.log()
    first.kill()
    make_worker(url(db), url(db), *lease)
    assert result.get(timeout=TIMEOUT) == 3000
    assert eventually(lambda: client.hlen("unacked") == 0)


def test_a_task_longer_than_the_visibility_timeout_runs_once(db, make_worker):
    lease = ("--broker-transport-option", "visibility_timeout=2")
    workers = [make_worker(url(db), url(db), *lease) for _ in range(2)]
    app = celery_app(url(db), url(db))
    result = app.send_task("math.spin", (6000,))
    assert result.get(timeout=TIMEOUT) == 6000
    time.sleep(1)
    runs = sum(received_ids(w).count(result.id) for w in workers)
    assert runs == 1, "\n".join(w.log() for w in workers)


# With two I/O threads the handlers of one batch first run in any order; the worker loop
# still receives them, and queues them for slots, in the broker's.
@pytest.mark.parametrize("io_threads", ["1", "2"])
def test_lower_priority_numbers_are_served_first_as_in_kombu(db, make_worker, io_threads):
    app = celery_app(url(db), url(db))
    late = [app.send_task("math.add", (9, i), priority=9) for i in range(5)]
    early = [app.send_task("math.add", (0, i), priority=0) for i in range(5)]
    worker = make_worker(url(db), url(db), "--concurrency", "1", "--io-threads", io_threads)
    for r in early + late:
        r.get(timeout=TIMEOUT)
    order = received_ids(worker, "math.add")
    assert set(order[:5]) == {r.id for r in early}, order
    assert set(order[5:]) == {r.id for r in late}, order


def test_two_workers_share_the_work_and_nothing_runs_twice(db, make_worker):
    workers = [make_worker(url(db), url(db)) for _ in range(2)]
    app = celery_app(url(db), url(db))
    results = [app.send_task("math.spin", (20,)) for _ in range(200)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [20] * 200
    seen = [received_ids(w) for w in workers]
    assert all(seen), "both workers should have run tasks"
    assert sorted(seen[0] + seen[1]) == sorted(r.id for r in results)


def envelope(headers, body: bytes, **properties):
    props = {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
             "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0}
    props.update(properties)
    return json.dumps({"body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
                       "content-type": "application/json", "headers": headers, "properties": props})


def test_malformed_messages_are_rejected_and_the_worker_goes_on(db, make_worker):
    worker = make_worker(url(db), url(db))
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db)
    bad = [
        "not json at all",
        json.dumps(["an", "array"]),
        json.dumps({"no": "envelope"}),
        envelope({"task": "math.add", "id": "two-element-body"}, b"[[2, 3], {}]"),
        envelope({"task": "math.add", "id": "args-not-a-list"}, b'[5, {}, null]'),
        envelope({"id": "no-task-header"}, b"[[2, 3], {}, {}]"),
        envelope({"task": "math.add", "id": "fifty-megabytes"}, b"[[" + b"1, " * (17 << 20) + b"1], {}, {}]"),
    ]
    for payload in bad:
        client.lpush("celery", payload)
    app = celery_app(url(db), url(db))
    assert app.send_task("math.add", (20, 22)).get(timeout=TIMEOUT) == 42
    worker.wait_for_log("fifty")  # the oversized one is named in the log too
    assert worker.log().count("rejecting malformed message") == len(bad), worker.log()
    assert client.llen("celery") == 0
    assert client.hlen("unacked") == 0, "rejected messages must not stay unacked"


def test_several_queues_are_served_fairly(db, make_worker):
    app = celery_app(url(db), url(db))
    on_a = [app.send_task("math.add", (1, i), queue="a") for i in range(60)]
    on_b = [app.send_task("math.add", (2, i), queue="b") for i in range(60)]
    worker = make_worker(url(db), url(db), "-Q", "a,b", "--concurrency", "1")
    assert [r.get(timeout=TIMEOUT) for r in on_a + on_b] == [1 + i for i in range(60)] + [2 + i for i in range(60)]
    first_half = set(received_ids(worker, "math.add")[:60])
    assert len(first_half & {r.id for r in on_a}) >= 15, "queue a starved"
    assert len(first_half & {r.id for r in on_b}) >= 15, "queue b starved"


def test_group_results(db, make_worker):
    from celery import group

    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    result = group(app.signature("math.mul", (i, i)) for i in range(20)).apply_async()
    assert result.get(timeout=TIMEOUT) == [i * i for i in range(20)]
    result.save()
    restored = app.GroupResult.restore(result.id)
    assert restored.get(timeout=TIMEOUT) == [i * i for i in range(20)]


def test_a_message_waiting_behind_a_long_task_goes_to_an_idle_worker(db, make_worker):
    # One slot: the short task is taken ahead while the long one is young, waits for the
    # executor, and is handed back after a second for the idle second worker to run.
    busy = make_worker(url(db), url(db), "--concurrency", "1")
    app = celery_app(url(db), url(db))
    long = app.send_task("math.spin", (8000,))
    short = app.send_task("math.spin", (10,))
    deadline = time.time() + TIMEOUT
    while short.id not in received_ids(busy) and time.time() < deadline:
        time.sleep(0.05)
    assert received_ids(busy) == [long.id, short.id], "the busy worker should have taken both"
    idle = make_worker(url(db), url(db), "--concurrency", "1")
    assert short.get(timeout=TIMEOUT) == 10
    assert not long.ready(), "the short task waited for the long one instead of moving on"
    assert short.id in received_ids(idle)
    assert long.get(timeout=TIMEOUT) == 8000


def test_a_rate_limit_from_the_manifest_spaces_that_task_only(db, make_worker, tmp_path):
    (tmp_path / "plugins.d").mkdir(exist_ok=True)
    (tmp_path / "plugins.d" / "math.toml").write_text('[tasks."math.add"]\nrate_limit = "5/s"\n')
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    began = time.monotonic()
    limited = [app.send_task("math.add", (i, 0)) for i in range(10)]
    free = [app.send_task("math.echo", (i,)) for i in range(10)]
    assert [r.get(timeout=TIMEOUT) for r in free] == [[[i], {}] for i in range(10)]
    assert not limited[-1].ready(), "tasks without a limit waited behind the limited ones"
    assert [r.get(timeout=TIMEOUT) for r in limited] == list(range(10))
    # Ten starts at 5/s: nine intervals of 0.2 s at least.
    assert time.monotonic() - began >= 1.8


def test_autoretry_for_from_the_manifest_retries_then_fails_with_the_original_error(db, make_worker, tmp_path):
    (tmp_path / "plugins.d").mkdir(exist_ok=True)
    (tmp_path / "plugins.d" / "math.toml").write_text(
        '[tasks."math.div"]\nautoretry_for = ["ZeroDivisionError"]\nmax_retries = 2\ndefault_retry_delay = 0.1\n')
    worker = make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    failing = app.send_task("math.div", (1, 0))
    with pytest.raises(ZeroDivisionError):
        failing.get(timeout=TIMEOUT)
    assert received_ids(worker, "math.div").count(failing.id) == 3, "the first run and two retries"
    assert app.send_task("math.div", (6, 3)).get(timeout=TIMEOUT) == 2
    # A failure not listed is not retried.
    other = app.send_task("math.add", ("a", 1))
    with pytest.raises(Exception):
        other.get(timeout=TIMEOUT)
    assert received_ids(worker, "math.add").count(other.id) == 1


def test_update_state_shows_progress_while_the_task_runs(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    result = app.send_task("math.progress", (20, 100))
    seen = []

    def progressed():
        if result.state == "PROGRESS":
            seen.append(result.info["current"])
        return len(set(seen)) >= 3

    assert eventually(progressed), f"progress seen: {seen}"
    assert result.info["total"] == 20 and sorted(seen) == seen, "progress went backwards"
    assert result.get(timeout=TIMEOUT) == 20
    assert result.state == "SUCCESS"


def test_far_off_etas_wait_in_the_broker_not_in_the_worker(db, make_worker):
    worker = make_worker(url(db), url(db), "--concurrency", "1", "--prefetch-multiplier", "1", "--park-eta-after", "1")
    app = celery_app(url(db), url(db))
    sent = time.monotonic()
    later = [app.send_task("math.add", (i, i), countdown=4) for i in range(10)]
    worker.wait_for_log("parked in the broker")
    # Held by the worker, one waiting task would fill its single reservation for 4 s.
    assert app.send_task("math.add", (1, 1)).get(timeout=3) == 2
    assert not any(r.ready() for r in later), "a parked task ran before its ETA"
    assert [r.get(timeout=TIMEOUT) for r in later] == [2 * i for i in range(10)]
    assert time.monotonic() - sent >= 3.9
    assert redis.Redis(REDIS_HOST, REDIS_PORT, db).zcard("celeriac.eta") == 0


def test_acks_late_false_in_the_manifest_acks_as_the_task_starts(db, make_worker, tmp_path):
    (tmp_path / "plugins.d").mkdir(exist_ok=True)
    (tmp_path / "plugins.d" / "math.toml").write_text('[tasks."math.spin"]\nacks_late = false\n')
    worker = make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    early = app.send_task("math.spin", (3000,))
    late = app.send_task("math.progress", (30, 100))
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db)

    def both_running():
        log = worker.log()
        return f"math.spin[{early.id}]" in log and late.state == "PROGRESS"

    assert eventually(both_running)
    time.sleep(0.3)  # acks are written in batches, a moment later
    unacked = [json.loads(v)[0]["headers"]["id"] for v in client.hvals("unacked")]
    assert unacked == [late.id], "only the late-acked task stays unacked while it runs"
    # Killed mid-task, the early-acked task is gone; the late-acked one runs again.
    worker.kill()
    make_worker(url(db), url(db), "--broker-transport-option", "visibility_timeout=1")
    assert late.get(timeout=TIMEOUT) == 30
    time.sleep(2)
    assert early.state == "PENDING"


def test_a_rate_limit_across_workers_holds_for_the_whole_fleet(db, make_worker, tmp_path):
    (tmp_path / "plugins.d").mkdir(exist_ok=True)
    (tmp_path / "plugins.d" / "math.toml").write_text(
        '[tasks."math.add"]\nrate_limit = "5/s"\nrate_limit_across_workers = true\n')
    # One message at a time each, so both workers take part.
    one_at_a_time = ("--concurrency", "1", "--prefetch-multiplier", "1")
    workers = [make_worker(url(db), url(db), *one_at_a_time) for _ in range(2)]
    app = celery_app(url(db), url(db))
    began = time.monotonic()
    results = [app.send_task("math.add", (i, 0)) for i in range(10)]
    assert [r.get(timeout=TIMEOUT) for r in results] == list(range(10))
    assert all(received_ids(worker, "math.add") for worker in workers), "one worker did all the work"
    # Ten starts at 5/s across the fleet: nine intervals of 0.2 s (each worker alone at
    # 5/s would have taken half that).
    assert time.monotonic() - began >= 1.8


def test_sigterm_waits_out_the_grace_period_then_returns_running_tasks_to_the_queue(db, make_worker):
    worker = make_worker(url(db), url(db), "--shutdown-timeout", "1")
    app = celery_app(url(db), url(db))
    task = app.send_task("math.spin", (30_000,))
    worker.wait_for_log(f"math.spin[{task.id}] received")
    time.sleep(0.5)
    began = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=20)
    assert time.monotonic() - began < 5, "the worker waited for the task beyond its grace period"
    assert "returning it to the queue" in worker.log()
    assert task.state == "PENDING", "a task stopped by the shutdown must not be stored as revoked"
    assert redis.Redis(REDIS_HOST, REDIS_PORT, db).llen("celery") == 1, "the message is back in its queue"


def thread_cpus(pid):
    """The CPUs each thread of `pid` may run on, one frozenset per thread."""
    placements = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                listed = next(l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list:"))
        except (FileNotFoundError, ProcessLookupError):
            continue
        cpus = set()
        for part in listed.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
        placements.append(frozenset(cpus))
    return placements


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to place threads on")
def test_an_idle_worker_keeps_its_threads_on_one_cpu_and_spreads_them_for_two_tasks(db, make_worker):
    """Hand-offs between the worker's threads cost less on one CPU; two tasks need two."""
    worker = make_worker(url(db), url(db))
    pid, everywhere = worker.process.pid, frozenset(os.sched_getaffinity(0))
    gathered = lambda: all(len(cpus) == 1 for cpus in thread_cpus(pid)) and len(set(thread_cpus(pid))) == 1
    assert eventually(gathered, timeout=10), thread_cpus(pid)
    app = celery_app(url(db), url(db))
    results = [app.send_task("math.spin", (3000,)) for _ in range(2)]
    assert eventually(lambda: set(thread_cpus(pid)) == {everywhere}, timeout=2.5), thread_cpus(pid)
    assert [r.get(timeout=TIMEOUT) for r in results] == [3000, 3000]
    assert eventually(gathered, timeout=10), thread_cpus(pid)


def keeps_only_a_stored_success(app, client, worker):
    """A task whose result key already holds SUCCESS keeps it; any other state is replaced.
    The metas hide other "status" keys in nested values and strings."""
    success, started, last = (str(uuid.uuid4()) for _ in range(3))
    metas = {
        success: {"status": "SUCCESS", "result": 42, "traceback": None, "children": [], "task_id": success},
        started: {"result": {"status": "SUCCESS", "note": 'a "status": "SUCCESS" in a string'},
                  "status": "STARTED", "task_id": started},
        last: {"result": [{"status": "FAILURE"}], "traceback": "\"status\": \"FAILURE\"",
               "status": "SUCCESS", "task_id": last},
    }
    for task_id, meta in metas.items():
        client.set(f"celery-task-meta-{task_id}", json.dumps(meta))
        app.send_task("math.add", (1, 1), task_id=task_id)
    for task_id in metas:
        worker.wait_for_log(f"Task math.add[{task_id}] succeeded")
    stored = {task_id: json.loads(client.get(f"celery-task-meta-{task_id}")) for task_id in metas}
    assert stored[success]["result"] == 42
    assert stored[started]["status"] == "SUCCESS" and stored[started]["result"] == 2
    assert stored[last]["result"] == [{"status": "FAILURE"}]


def test_a_stored_success_is_kept(db, make_worker):
    worker = make_worker(url(db), url(db))
    keeps_only_a_stored_success(celery_app(url(db), url(db)), redis.Redis(REDIS_HOST, REDIS_PORT, db=db), worker)


def test_celery_clients_on_redis_6_0(tmp_path, make_worker):
    """Redis 6.0 (Debian 11's and Ubuntu 22.04's), which has no `RPOP key count`: tasks queued
    before the worker starts, a chord counted in Redis, a task parked in the broker until its
    ETA, and a ping over Redis's pub/sub. The ping is `celeriac inspect`'s: kombu 5.7's own
    client refreshes its reply queue's binding with `ZADD … GT` (Redis 6.2), which 6.0 refuses."""
    port = free_port()
    server = start_redis(port, tmp_path, REDIS_6_0)
    try:
        old = url(0, port)
        assert redis.Redis(REDIS_HOST, port).info("server")["redis_version"].startswith("6.0.")
        app = celery_app(old, old)
        results = [app.send_task("math.add", (i, i)) for i in range(200)]
        worker = make_worker(old, old, "-n", "old-redis@test", "--park-eta-after", "1")
        assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(200)], worker.log()
        add = app.signature("math.add")
        header = [add.clone((i, i)) for i in range(20)]
        assert chord(header, app.signature("math.tsum")).apply_async().get(timeout=TIMEOUT) == 380
        parked = app.send_task("math.add", (4, 5), countdown=2)
        ping = subprocess.run([str(BIN), "--broker", old, "inspect", "ping", "-d", "old-redis@test", "--json", "-t", "5"],
                              capture_output=True, text=True, timeout=60)
        assert json.loads(ping.stdout) == {"old-redis@test": {"ok": "pong"}}, ping.stdout + ping.stderr
        assert parked.get(timeout=TIMEOUT) == 9
        assert f"Task math.add[{parked.id}] parked in the broker" in worker.log()
        assert "older than 6.2" in worker.log()
        # Debian's Redis 6.0 has no cjson in its scripts.
        keeps_only_a_stored_success(app, redis.Redis(REDIS_HOST, port), worker)
        assert eventually(lambda: redis.Redis(REDIS_HOST, port).hlen("unacked") == 0)
    finally:
        server.terminate()
        server.wait()
