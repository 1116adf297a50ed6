"""Benchmark: the first publish after a worker starts, with and without warming before the pool forks.

A Celery prefork worker imports its tasks in its main process and forks its pool processes from it; the
first related and render steps a pool process runs then paid for imports (numpy, scipy, premailer,
cssutils, lxml, Markdown, Babel's locale data, OpenCC) and template compiling. `newsletter.warmup` does
that in the main process before the fork (`tasks.app`, ``worker_init``). This measures it without Celery's
noise: each trial is a fresh Python process (the "main process") that imports `tasks` as a worker does,
warms or not, then forks one child (the "pool process") that runs ``attach_related`` and
``render_editions`` of a new issue against a scratch PostgreSQL database (the demo's articles). Cold and
warm trials alternate, so both see the same load; the load average is printed with the medians.

    python bench/warm_start.py --trials 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def child(url: str, number: int, warm: bool) -> None:
    """The worker's main process: import the tasks (as ``celery -A tasks`` does), warm or not, then fork
    the pool process that runs the two steps; print its timings as one JSON line."""
    started = time.perf_counter()
    os.environ.update({"DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "bench-secret-key", "NEWSLETTER_BASE_URL": "https://news.example.org"})
    import tasks  # noqa: F401  (what the worker's main process imports before its pool starts)
    from newsletter import publishing, warmup
    from newsletter.db import get_engine, session_factory
    from newsletter.issues import get_issue
    from tasks.app import settings

    s = settings()
    took = warmup.warm(s) if warm else {}
    get_engine(s.database_url).dispose()
    main_seconds = time.perf_counter() - started
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        get_engine(s.database_url).dispose(close=False)  # as tasks.app does in a new pool process
        with session_factory(s.database_url)() as session:
            issue_id = get_issue(session, number).id
            t0 = time.perf_counter()
            publishing.attach_related(session, s, issue_id)
            t1 = time.perf_counter()
            publishing.render_editions(session, s, issue_id)
            t2 = time.perf_counter()
        os.write(write, json.dumps({"related": t1 - t0, "render": t2 - t1}).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    result = json.loads(os.read(read, 4096))
    print(json.dumps({**result, "main": main_seconds, "warm parts": took}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per mode (cold, warm), alternating")
    parser.add_argument("--child", nargs=3, metavar=("URL", "ISSUE", "WARM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2] == "1")
        return
    from _scratch_db import pg_database
    from publish import seed

    print(f"load average at start: {loadavg()}  ({os.cpu_count()} CPUs)")
    with pg_database() as url:
        numbers = seed(url, 10, 2 * args.trials + 1, False)
        runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
        for i, number in enumerate(numbers):
            mode = "cold" if i % 2 else "warm"
            cmd = [sys.executable, __file__, "--child", url, str(number), "1" if mode == "warm" else "0"]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            if i == 0:  # the first render derives the articles' pending text and stores it: not a start-up cost
                continue
            runs[mode].append(out)
            shown = f"related {out['related']:.2f} s, render {out['render']:.2f} s (main process {out['main']:.2f} s)"
            print(f"  {mode}: {shown}  load {loadavg()}")
    med = statistics.median
    print(f"\nmedians of {args.trials} trials each; load average now {loadavg()}")
    for mode, rows in runs.items():
        print(
            f"  {mode}: related {med(r['related'] for r in rows):.2f} s, render {med(r['render'] for r in rows):.2f} s, "
            f"main process start {med(r['main'] for r in rows):.2f} s"
        )


if __name__ == "__main__":
    main()
