"""The same tasks as plugins/math, written for Celery's own worker: the baseline."""

import os

from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BACKEND"])


@app.task(name="math.add")
def add(x, y):
    return x + y
