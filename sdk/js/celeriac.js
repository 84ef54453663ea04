// Celeriac plugins in JavaScript: plain functions registered with `task`.
//
//     import { task, TaskError } from "./celeriac.js";
//     task(function shout(text) { return text.toUpperCase(); }, { doc: "Upper-case a text." });
//
// Arguments and results are JSON, as Celery sends them. A thrown error fails the task with
// its name and message (`new TaskError("ValueError", "...")` names a Python exception);
// `retry({ countdown })` asks for a retry, `reject()` refuses the message. `celeriac
// plugins build` makes the folder a Wasm component with componentize-js. Outside Wasm (in
// `node --test`) the tasks are ordinary functions and the host calls do nothing.

const TASKS = new Map();

// Python's builtin exceptions: these names arrive in Celery as the real classes.
const PYTHON_BUILTINS = new Set([
  "Exception", "ArithmeticError", "AssertionError", "AttributeError", "ConnectionError",
  "FileNotFoundError", "IndexError", "KeyError", "LookupError", "MemoryError",
  "NotImplementedError", "OSError", "OverflowError", "PermissionError", "RuntimeError",
  "TimeoutError", "TypeError", "ValueError", "ZeroDivisionError",
]);

/** A failure with a Python exception type, e.g. `new TaskError("ValueError", "bad")`. */
export class TaskError extends Error {
  constructor(type, message) {
    super(message);
    this.name = type;
  }
}

class Retry {
  constructor({ countdown, maxRetries, reason } = {}) {
    Object.assign(this, { countdown, maxRetries, reason });
  }
}

class Reject {
  constructor(requeue) {
    this.requeue = requeue;
  }
}

/** Serve `fn` as the task `options.name` (default `<plugin>.<function name>`). */
export function task(fn, options = {}) {
  const plugin = globalThis.CELERIAC_PLUGIN ?? "plugin";
  const name = options.name ?? `${plugin}.${fn.name}`;
  if (TASKS.has(name)) throw new Error(`task ${name} is defined twice`);
  TASKS.set(name, { fn, doc: options.doc ?? "" });
  return fn;
}

/** Ask the worker to run this task again later, like Celery's `self.retry()`. */
export function retry({ countdown, maxRetries, reason } = {}) {
  throw new Retry({ countdown, maxRetries, reason });
}

/** Refuse the message, like Celery's `Reject`: dropped, or requeued. */
export function reject(requeue = false) {
  throw new Reject(requeue);
}

const host = () => globalThis.CELERIAC_HOST;

/** Store a custom state (e.g. PROGRESS) that `AsyncResult.info` shows meanwhile. */
export function updateState(state, meta) {
  host()?.updateState(state, JSON.stringify(meta));
}

/** A line in the worker's log, tagged with the task's id and name. */
export function log(message, level = "info") {
  host()?.log(level, String(message));
}

/** True once the task has run past its soft time limit. */
export function softTimeLimitExceeded() {
  return host()?.softTimeLimitExceeded() ?? false;
}

let current = null;

/** The running task's context: id, name, retries, rootId, parentId, groupId, … */
export function context() {
  return current;
}

function failure(error) {
  const type = error instanceof Error ? error.name : "Exception";
  return {
    tag: "failure",
    val: {
      excType: type,
      excModule: PYTHON_BUILTINS.has(type) ? "builtins" : "celeriac.tasks",
      message: error instanceof Error ? error.message : String(error),
      traceback: error instanceof Error ? error.stack : undefined,
    },
  };
}

/** The component's export: the worker asks it for the tasks and runs them. */
export const handler = {
  tasks() {
    return [...TASKS].map(([name, { doc }]) => ({ name, doc }));
  },
  run(ctx, argsJson, kwargsJson) {
    const entry = TASKS.get(ctx.name);
    if (!entry) throw failure(new TaskError("NotRegistered", ctx.name));
    current = ctx;
    try {
      const kwargs = JSON.parse(kwargsJson);
      const args = JSON.parse(argsJson);
      // Keyword arguments arrive as one last object argument.
      const result = Object.keys(kwargs).length ? entry.fn(...args, kwargs) : entry.fn(...args);
      return JSON.stringify(result ?? null);
    } catch (error) {
      if (error instanceof Retry) {
        throw { tag: "retry", val: { countdown: error.countdown, maxRetries: error.maxRetries, reason: error.reason } };
      }
      if (error instanceof Reject) throw { tag: "reject", val: error.requeue };
      throw failure(error);
    } finally {
      current = null;
    }
  },
};
