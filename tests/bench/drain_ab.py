"""Drain rate and CPU per task of Celeriac binaries, alternating, to judge a change to the
hot path on a noisy machine (where one `make bench` against another says little). Each
binary goes first in turn, round after round.

    python drain_ab.py --broker rabbitmq --tasks 20000 --pairs 3 OLD_BINARY NEW_BINARY

For each binary in turn: fill the queue with `math.add` tasks (or `--task math.fib --args
'[18]'`) from the Python Celery client
(results on Redis), start the worker (`-c 2`), time the drain, and print the rate, the CPU
per task of the worker and of each server, and how busy each worker thread was; with two
binaries, at the end, how the second fared against the first round by round, with a sign
test (4 rounds out of 4 ahead is still p = 0.12: judge a change of a few % on 8 or more; one
binary against a copy of itself, 8 rounds of 30,000 on Redis, came out −2.2% a round with
p = 0.73, 2026-12-07). Extra
worker options: `--worker-option=--prefetch-multiplier=64` (repeatable). Binaries default
to $CELERIAC_BIN. Uses Redis database 14, flushed.
"""

import argparse
import json
import math
import os
import statistics
import tempfile
from pathlib import Path

from celery import Celery

import bench
from bench import Amqp, Redis, cpu_seconds, server_pid, stop, wait_until

BROKERS = {"redis": Redis, "rabbitmq": Amqp}


def thread_busy(pid, seconds):
    """Share of `seconds` each thread of `pid` spent on a CPU, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        # Fields after the parenthesised name; utime and stime are the 12th and 13th.
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        busy[name] = busy.get(name, 0) + (int(fields[11]) + int(fields[12])) / tick / seconds
    return busy


def drain(binary, broker, tasks, options, task, task_args):
    broker.reset()
    app = Celery("drain-ab", broker=broker.url, backend=broker.backend_url)
    with app.producer_or_acquire() as producer:
        for i in range(tasks):
            app.send_task(task, task_args if task_args is not None else (i, i), producer=producer)
    app.close()
    servers = {name: server_pid(command) for name, command in broker.servers.items()}
    before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    with tempfile.TemporaryFile("w+") as log:
        process = bench.start_celeriac(broker, log, binary=binary, options=options)
        try:
            seconds = wait_until(lambda: broker.drained(tasks), process, log, "celeriac")
            worker_us = cpu_seconds(process.pid) * 1e6 / tasks
            busy = thread_busy(process.pid, seconds)
        finally:
            stop(process)
    servers_us = {name: (cpu_seconds(pid) - before[name]) * 1e6 / tasks for name, pid in servers.items()}
    return tasks / seconds, worker_us, servers_us, busy


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", choices=BROKERS, default="rabbitmq")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("binaries", nargs="*", type=Path, default=[bench.BIN])
    parser.add_argument("--task", default="math.add")
    parser.add_argument("--args", type=json.loads, default=None, help="JSON list (default: [i, i])")
    parser.add_argument("--worker-option", action="append", default=[], help="passed to `celeriac worker`")
    args = parser.parse_args()
    assert (bench.PLUGINS / "math.wasm").exists(), f"no {bench.PLUGINS / 'math.wasm'}: run `make plugins`"
    rates = {binary: [] for binary in args.binaries}
    for pair in range(args.pairs):
        # Each binary leads in turn: on RabbitMQ the first drain of a round ran ~13% faster
        # whichever binary it was (the same two, 4 rounds each way, 2026-12-07).
        shift = pair % len(args.binaries)
        for binary in args.binaries[shift:] + args.binaries[:shift]:
            rate, worker_us, servers_us, busy = drain(
                binary, BROKERS[args.broker](), args.tasks, args.worker_option, args.task, args.args
            )
            rates[binary].append(rate)
            servers = ", ".join(f"{name} {us:.0f}" for name, us in servers_us.items())
            threads = ", ".join(f"{name} {100 * share:.0f}%" for name, share in busy.items() if share >= 0.01)
            print(f"{binary}: {rate:.0f} tasks/s; CPU per task: worker {worker_us:.0f} µs, {servers}; "
                  f"threads busy: {threads}", flush=True)
    for binary, figures in rates.items():
        print(f"{binary}: median {statistics.median(figures):.0f} tasks/s of {[round(r) for r in figures]}")
    if len(rates) == 2:
        print(paired_verdict(*rates.values(), names=args.binaries))


def sign_test(ahead, behind):
    """Two-sided sign test: the chance of a split at least this uneven if neither binary
    were faster (ties left out)."""
    n = ahead + behind
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(max(ahead, behind), n + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_verdict(first, second, names):
    """The second binary against the first, round by round: the two drains of a round run
    within a minute of each other, so their difference carries less of the machine's drift
    over the whole run than the medians do."""
    changes = [(b - a) / a for a, b in zip(first, second)]
    ahead = sum(1 for c in changes if c > 0)
    behind = sum(1 for c in changes if c < 0)
    return (f"{names[1]} against {names[0]}: ahead in {ahead} of {len(changes)} rounds, behind in {behind}; "
            f"median change {100 * statistics.median(changes):+.1f}% a round; "
            f"sign test p = {sign_test(ahead, behind):.2f}")


if __name__ == "__main__":
    main()
