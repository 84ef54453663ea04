"""The least a Redis worker can do: take a task message and store a fixed SUCCESS for it.

No decoding of arguments, no task, no acknowledgement bookkeeping: BRPOP, then SET and
PUBLISH of the result meta in one round trip. The bench measures the Celery client's
round trip against it, which is the floor any worker's round trip sits on.

    python null_worker.py redis://127.0.0.1:6379/14
"""

import json
import sys
from urllib.parse import urlparse

import redis


def main():
    url = urlparse(sys.argv[1])
    client = redis.Redis(url.hostname or "127.0.0.1", url.port or 6379, db=int(url.path.strip("/") or 0))
    while True:
        _, raw = client.brpop("celery")
        task_id = json.loads(raw)["headers"]["id"]
        meta = json.dumps({"status": "SUCCESS", "result": 0, "traceback": None, "children": [],
                           "date_done": None, "task_id": task_id})
        key = f"celery-task-meta-{task_id}"
        client.pipeline(transaction=False).set(key, meta).publish(key, meta).execute()


if __name__ == "__main__":
    main()
