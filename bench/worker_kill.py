"""How long a killed worker's batch waits before another worker sends the rest of it.

One issue of ``--messages`` subscribers sent as one batch (``NEWSLETTER_BATCH_SIZE`` = the same) to an aiosmtpd
relay that answers each DATA after ``--delay`` seconds. Worker A (``celery worker -c 1``) takes the batch; once
worker B is ready and A has sent ``--kill-after`` messages, A is SIGKILLed: its whole process group (``--mode
group``: the machine or container died) or only its pool process (``--mode child``: the main process survives,
sees Celery's WorkerLostError and gives the task message back). Printed: seconds from the kill to the first
message of the batch sent after it, and to the last; duplicates at the relay (by Message-ID); the load average.

Defaults are the product's (``NEWSLETTER_LEASE_SECONDS``, ``NEWSLETTER_SWEEP_INTERVAL`` unset) unless given with
``--env``. ``--code DIR`` runs the workers and beat from another checkout (e.g. ``git archive main | tar -x -C
/tmp/base``) to compare with it; the database is migrated by that checkout's code.

    python bench/worker_kill.py --mode group
    python bench/worker_kill.py --mode child --code /tmp/base
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _scratch_db import pg_database  # noqa: E402

from newsletter.db import session_factory  # noqa: E402
from newsletter.models import Delivery, DeliveryStatus  # noqa: E402
from tests.smtp_server import SMTPServer  # noqa: E402
from tests.test_faults import RedisServer  # noqa: E402


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def spawn(code: Path, env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "PYTHONPATH": str(code)}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", *args], cwd=code, env=full,
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while b" ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def run(args: argparse.Namespace, tmp: Path) -> None:
    from newsletter.config import load_settings
    from newsletter.issues import create_issue
    from newsletter.models import Article, utcnow
    from newsletter.runner import start_publish
    from tests.test_faults import add_subscribers

    code = Path(args.code).resolve()
    redis_server = RedisServer(tmp)
    redis_server.start()
    with pg_database() as url, SMTPServer(data_delay=args.delay) as smtp:
        migrate = "import sys; from newsletter.db import upgrade; upgrade(sys.argv[1])"
        subprocess.run([sys.executable, "-c", migrate, url], cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True)
        env = {
            "DATABASE_URL": url, "REDIS_URL": redis_server.url, "SMTP_URL": smtp.url, "NEWSLETTER_HOME": str(tmp / "home"),
            "NEWSLETTER_SECRET_KEY": "bench-secret-key", "NEWSLETTER_BASE_URL": "https://news.example.org",
            "NEWSLETTER_BATCH_SIZE": str(args.messages),
        }  # fmt: skip
        env.update(dict(item.split("=", 1) for item in args.env))
        factory = session_factory(url)
        with factory() as session:
            add_subscribers(session, args.messages, ("en",))
            article = Article(external_id="k1", title="Grid security rules", summary="Patch.", body_html="<p>Patch.</p>",
                              body_text="Patch.", lang="en", published_at=utcnow())  # fmt: skip
            session.add(article)
            session.flush()
            number = create_issue(session, [article]).number
            session.commit()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            procs["beat"] = spawn(code, env, ["beat", "-s", str(tmp / "beat-schedule"), "--loglevel=INFO"], tmp / "beat.log")
            worker = ["worker", "-Q", "render,plan,send", "-c", "1", "--loglevel=INFO", "--without-gossip", "--without-mingle"]
            procs["a"] = spawn(code, env, [*worker, "-n", "a@%h"], tmp / "a.log")
            wait_ready(procs["a"], tmp / "a.log")
            issue_id, _ = start_publish(load_settings(env), number)
            while len(smtp.recorder.messages) < 1:
                time.sleep(0.05)
            procs["b"] = spawn(code, env, [*worker, "-n", "b@%h"], tmp / "b.log")
            wait_ready(procs["b"], tmp / "b.log")
            while len(smtp.recorder.messages) < args.kill_after:
                time.sleep(0.02)
            if args.mode == "group":
                os.killpg(procs["a"].pid, signal.SIGKILL)
            else:
                for pid in children(procs["a"].pid):
                    os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            at_kill = len(smtp.recorder.messages)
            first_after: float | None = None
            deadline = killed + args.timeout
            while len(set(smtp.recorder.recipients())) < args.messages:
                if first_after is None and len(smtp.recorder.messages) > at_kill + 1:  # +1: one may have been in flight
                    first_after = time.monotonic() - killed
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not all sent {args.timeout} s after the kill")
                time.sleep(0.05)
            all_after = time.monotonic() - killed
            with factory() as session:
                from sqlalchemy import func, select

                attempts = session.scalar(select(func.max(Delivery.attempts)).where(Delivery.issue_id == issue_id))
                sent = session.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENT)
                )
            duplicates = sum(n - 1 for n in smtp.recorder.by_message_id().values() if n > 1)
            print(
                f"code={code.name} mode={args.mode} env={' '.join(args.env) or '(defaults)'}: killed after {at_kill} of {args.messages}; "
                f"first message after the kill {first_after if first_after is None else round(first_after, 1)} s, "
                f"all sent {all_after:.1f} s after it; duplicates {duplicates}; ledger sent {sent}, max attempts {attempts}; "
                f"load {loadavg()}",
                flush=True,
            )
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            from newsletter.db import get_engine

            get_engine(url).dispose()
            redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("group", "child"), default="group")
    parser.add_argument("--code", default=str(ROOT), help="checkout whose workers and beat run (default: this one)")
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--delay", type=float, default=0.25, help="seconds before the relay answers each DATA")
    parser.add_argument("--kill-after", type=int, default=8, help="messages sent before the kill")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every process (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="worker-kill-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
