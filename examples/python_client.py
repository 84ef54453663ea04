"""A Python Celery application calling Celeriac's Wasm tasks.

Start a worker first (`make run` in the repository root), then, from the same folder:

    pip install 'celery[sqlalchemy]'
    python examples/python_client.py
"""

from celery import Celery

# The embedded default: broker and results in one SQLite file, ./celeriac.db.
app = Celery("client", broker="sqla+sqlite:///celeriac.db", backend="db+sqlite:///celeriac.db")

if __name__ == "__main__":
    print("math.add(2, 3) =", app.send_task("math.add", (2, 3)).get(timeout=10))
    print("math.echo =", app.send_task("math.echo", (1, "two"), {"three": 3}).get(timeout=10))
    try:
        app.send_task("math.div", (1, 0)).get(timeout=10)
    except ZeroDivisionError as exc:
        print("math.div(1, 0) raised", repr(exc))
