"""Chains and link / link_error callbacks built with Celery's own canvas, run by Celeriac.

Over Redis, a database number per test. Chords are not run yet.
"""

import time

import pytest
from celery import chain
from celery.result import AsyncResult

from conftest import REDIS_HOST, REDIS_PORT, celery_app

TIMEOUT = 60


def url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def test_a_chain_passes_each_result_on(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    add = lambda *args: app.signature("math.add", args)  # noqa: E731
    result = (add(2, 2) | add(4) | add(8)).apply_async()
    assert result.get(timeout=TIMEOUT) == 16
    assert result.parent.get(timeout=TIMEOUT) == 8
    assert result.parent.parent.get(timeout=TIMEOUT) == 4
    # An immutable step ignores what came before.
    assert (add(1, 1) | app.signature("math.add", (5, 5), immutable=True)).apply_async().get(timeout=TIMEOUT) == 10


def test_a_chain_of_a_hundred_steps(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    steps = [app.signature("math.add", (0, 1))] + [app.signature("math.add", (1,)) for _ in range(99)]
    assert chain(*steps).apply_async().get(timeout=TIMEOUT) == 100


def test_a_failing_step_stops_the_chain(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    result = (app.signature("math.div", (1, 0)) | app.signature("math.add", (1,))).apply_async()
    with pytest.raises(ZeroDivisionError):
        result.parent.get(timeout=TIMEOUT)
    time.sleep(1)  # a wrongly sent next step would have run by now
    assert result.state == "PENDING", "the step after a failure must not run"


def test_link_and_link_error_callbacks(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    on_success = app.signature("math.add", (10,))
    on_success.freeze()
    assert app.send_task("math.add", (2, 3), link=on_success).get(timeout=TIMEOUT) == 5
    assert AsyncResult(on_success.id, app=app).get(timeout=TIMEOUT) == 15

    on_error = app.signature("math.echo", ("failed",))
    on_error.freeze()
    failing = app.send_task("math.div", (1, 0), link_error=on_error)
    with pytest.raises(ZeroDivisionError):
        failing.get(timeout=TIMEOUT)
    # Celery sends an errback that is not a local Python function the failed task's id.
    assert AsyncResult(on_error.id, app=app).get(timeout=TIMEOUT) == [[failing.id, "failed"], {}]
