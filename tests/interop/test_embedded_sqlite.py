"""A Python Celery application talks to Celeriac over the embedded SQLite broker and
reads results from the same file: `sqla+sqlite:///FILE` and `db+sqlite:///FILE`."""

import json
import sqlite3
import time

import pytest
from billiard.exceptions import TimeLimitExceeded
from celery.exceptions import NotRegistered

TIMEOUT = 30


def test_add_returns_5(sqlite_app):
    assert sqlite_app.send_task("math.add", (2, 3)).get(timeout=TIMEOUT, interval=0.05) == 5


def test_division_by_zero_raises_the_python_exception(sqlite_app):
    result = sqlite_app.send_task("math.div", (1, 0))
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        result.get(timeout=TIMEOUT, interval=0.05)
    assert result.state == "FAILURE"


def test_time_limit_fails_the_task_and_the_worker_keeps_serving(sqlite_app):
    started = time.time()
    result = sqlite_app.send_task("math.spin", (60000,), time_limit=2)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=TIMEOUT, interval=0.05)
    assert time.time() - started < TIMEOUT
    assert sqlite_app.send_task("math.mul", (6, 7)).get(timeout=TIMEOUT, interval=0.05) == 42


def test_absurd_time_limits_are_clamped_not_fatal(sqlite_app):
    """A limit too large for any clock (here 1e300 s) must not crash the worker."""
    result = sqlite_app.send_task("math.add", (1, 2), time_limit=1e300, soft_time_limit=1e300)
    assert result.get(timeout=TIMEOUT, interval=0.05) == 3


def test_unknown_task_raises_not_registered(sqlite_app):
    with pytest.raises(NotRegistered):
        sqlite_app.send_task("math.nope", ()).get(timeout=TIMEOUT, interval=0.05)


def test_arguments_survive_the_trip(sqlite_app):
    args = ("é😀", None, 1.5, [1, {"a": True}])
    kwargs = {"flag": False, "nested": {"list": [1, "two"]}}
    assert sqlite_app.send_task("math.echo", args, kwargs).get(timeout=TIMEOUT, interval=0.05) == [list(args), kwargs]


def test_countdown_and_protocol_1(sqlite_app):
    result = sqlite_app.send_task("math.add", (1, 2), countdown=1)
    assert result.get(timeout=TIMEOUT, interval=0.05) == 3
    sqlite_app.conf.task_protocol = 1
    try:
        assert sqlite_app.send_task("math.add", (4, 5)).get(timeout=TIMEOUT, interval=0.05) == 9
    finally:
        sqlite_app.conf.task_protocol = 2


def test_many_tasks_all_right(sqlite_app):
    results = [sqlite_app.send_task("math.add", (i, i)) for i in range(300)]
    assert [r.get(timeout=TIMEOUT, interval=0.05) for r in results] == [2 * i for i in range(300)]


def test_malformed_messages_are_rejected_and_logged(sqlite_app, sqlite_worker):
    """Broken envelopes and bodies are dropped with a log line; the worker goes on."""
    db = sqlite3.connect(sqlite_worker.folder / "celeriac.db")
    queue_id = db.execute("SELECT id FROM kombu_queue WHERE name = 'celery'").fetchone()[0]
    bad_body = {"body": "W1syLCAzXSwge31d", "content-type": "application/json", "content-encoding": "utf-8",
                "headers": {"task": "math.add", "id": "bad-body-1"},
                "properties": {"body_encoding": "base64", "delivery_info": {"exchange": "", "routing_key": "celery"}}}
    for payload in ["this is not json", json.dumps({"no": "envelope"}), json.dumps(bad_body)]:
        db.execute("INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) VALUES (1, NULL, ?, 1, ?)",
                   (payload, queue_id))
    db.commit()
    assert sqlite_app.send_task("math.add", (20, 22)).get(timeout=TIMEOUT, interval=0.05) == 42
    sqlite_worker.wait_for_log("task_id=bad-body-1")
    assert sqlite_worker.log().count("rejecting malformed message") >= 3
    left = db.execute("SELECT COUNT(*) FROM kombu_message WHERE queue_id = ?", (queue_id,)).fetchone()[0]
    assert left == 0, "malformed messages must not stay in the queue"
