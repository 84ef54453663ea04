"""Celeriac plugins in Python: plain functions marked with ``@task``.

    from celeriac import task, Handler  # Handler is what the worker calls

    @task
    def shout(text: str) -> str:
        "Upper-case a text."
        return text.upper()

Arguments and results are JSON, as Celery sends them. An exception fails the task with
its type name and message (a builtin such as ``ValueError`` arrives in Python Celery as
the same class); ``retry(countdown=...)`` asks for a retry, ``Reject`` refuses the
message. ``celeriac plugins build`` turns the module into a Wasm component with
componentize-py. Outside Wasm (in a plain ``pytest``) the tasks are ordinary functions
and the host calls do nothing.
"""

import json
import traceback

try:  # Inside the component: the bindings componentize-py generates from the WIT.
    from componentize_py_types import Err
    from wit_world import exports
    from wit_world.imports import host, types
except ImportError:  # Plain CPython, e.g. unit tests of the task functions.
    exports = host = types = Err = None

__all__ = ["task", "retry", "Retry", "Reject", "update_state", "log", "soft_time_limit_exceeded", "context", "Handler"]

_TASKS = {}
_CONTEXT = None


def task(fn=None, *, name=None):
    """Serve ``fn`` as the task ``name`` (default ``<module>.<function>``)."""

    def register(fn):
        task_name = name or f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        if task_name in _TASKS:
            raise ValueError(f"task {task_name} is defined twice")
        _TASKS[task_name] = fn
        return fn

    return register(fn) if fn is not None else register


class Retry(Exception):
    """Raised by ``retry()``: run the task again later, like Celery's ``self.retry()``."""

    def __init__(self, countdown=None, max_retries=None, reason=None):
        super().__init__(reason or "retry")
        self.countdown, self.max_retries, self.reason = countdown, max_retries, reason


class Reject(Exception):
    """Refuse the message, like Celery's ``Reject``: dropped, or requeued if ``requeue``."""

    def __init__(self, requeue=False):
        super().__init__("rejected")
        self.requeue = requeue


def retry(countdown=None, max_retries=None, reason=None):
    """Ask the worker to retry this task (never returns)."""
    raise Retry(countdown, max_retries, reason)


def update_state(state, meta):
    """Store a custom state (e.g. ``PROGRESS``) that ``AsyncResult.info`` shows meanwhile."""
    if host is not None:
        host.update_state(state, json.dumps(meta))


def log(message, level="info"):
    """A line in the worker's log, tagged with the task's id and name."""
    if host is not None:
        host.log(getattr(types.LogLevel, level.upper()), str(message))


def soft_time_limit_exceeded():
    """True once the task has run past its soft time limit."""
    return host is not None and host.soft_time_limit_exceeded()


def context():
    """The running task's context (id, name, retries, root_id, parent_id, group_id, …)."""
    return _CONTEXT


def _failure(exc):
    module = type(exc).__module__
    return types.TaskError_Failure(
        types.Failure(
            exc_type=type(exc).__name__,
            exc_module="builtins" if module in ("builtins", "__builtin__") else module,
            message=str(exc),
            traceback=traceback.format_exc(),
        )
    )


class Handler(exports.Handler if exports is not None else object):
    """The component's export: the worker asks it for the tasks and runs them."""

    def tasks(self):
        return [types.TaskInfo(name=name, doc=(fn.__doc__ or "").strip().split("\n")[0]) for name, fn in _TASKS.items()]

    def run(self, ctx, args_json, kwargs_json):
        global _CONTEXT
        fn = _TASKS.get(ctx.name)
        if fn is None:
            raise Err(types.TaskError_Failure(types.Failure("NotRegistered", "celery.exceptions", ctx.name, None)))
        _CONTEXT = ctx
        try:
            result = fn(*json.loads(args_json), **json.loads(kwargs_json))
            return json.dumps(result)
        except Retry as request:
            raise Err(types.TaskError_Retry(types.RetryRequest(request.countdown, request.max_retries, request.reason)))
        except Reject as refusal:
            raise Err(types.TaskError_Reject(refusal.requeue))
        except Exception as exc:  # noqa: BLE001 - every failure is the task's result
            raise Err(_failure(exc))
        finally:
            _CONTEXT = None
