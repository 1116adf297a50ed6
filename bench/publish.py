"""Benchmark: publishing an issue end to end, against Postfix's smtp-source and a naive Celery app.

One run starts its own services: ``smtp-sink`` (Debian's postfix package) on a free loopback port, a
private ``redis-server`` on a free port, and a throw-away PostgreSQL database (127.0.0.1:5432). It imports
the demo's articles (the shared corpora when present, else the bundled sample), adds N subscribers in
en, zh-Hans and zh-Hant, and starts ``celery -A tasks worker -c 2`` (one worker whose prefork pool has 2
processes: the "2 worker processes"; ``--workers``/``--concurrency`` change it). Each run then publishes a
new issue and prints: emails/s end to end (publish request to the issue's ``finished_at``) and for the
send phase (first claim to last ``sent_at`` in the ledger), the time of each stage (from the tasks'
start and end), premailer calls, CPU ms per message and peak RSS (VmHWM) per process, the messages the
sink counted, and the load average. Right after each run, ``smtp-source`` puts as many messages of the
product's mean size into the same sink with as many sessions as the product has SMTP connections (one
per pool process, or `--connections`); the ratio is printed. Last, the naive baseline (bench/naive_celery.py: one Celery task
per subscriber with Jinja2 + premailer + EmailMessage + a new SMTP connection) sends to the first
``--naive-subscribers`` subscribers with the same pool size, and the product/naive ratio is printed.

    python bench/publish.py                          # 10,000 subscribers, 1 run
    python bench/publish.py --subscribers 2000 --runs 3
    python bench/publish.py --subscribers 100000
    python bench/publish.py --embedded               # SQLite, in-process worker, the outbox (no Redis, no relay)
    python bench/publish.py --slow --connections 50  # smtp-sink -w 1: every DATA answered after 1 s
    python bench/publish.py --profile /tmp/prof      # py-spy record the worker during the first run

Timings on a shared machine lie: compare the same-run ratios, and mind the load average printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, insert, select, text

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import _instrument  # noqa: E402  (bench/ is not a package)
from _scratch_db import PG_ADMIN, pg_database  # noqa: E402

from newsletter.config import Settings, load_settings  # noqa: E402
from newsletter.db import session_factory, upgrade  # noqa: E402

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SOURCE_HEADER_BYTES = 120  # smtp-source's own From/To/Date/Message-Id headers, outside its -l payload
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAGES = {"related": "newsletter.attach_related", "render": "newsletter.render_editions", "plan": "newsletter.plan_deliveries"}


# ----------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (/proc/PID/stat fields 14 and 15); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Sink:
    """smtp-sink on a free loopback port; ``count()`` is its running message counter (-c)."""

    port: int
    proc: subprocess.Popen[Any]
    out: Path

    @classmethod
    def start(cls, tmp: Path, data_delay: float | None = None) -> Sink:
        port = free_port()
        out = tmp / f"sink-{port}.out"
        cmd = [SMTP_SINK, "-c", "-m", "1024"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # required when run as root
        if data_delay:
            cmd += ["-w", str(data_delay)]
        proc = subprocess.Popen([*cmd, f"127.0.0.1:{port}", "1024"], stdout=out.open("wb"), stderr=subprocess.STDOUT)
        wait_port(port)
        return cls(port, proc, out)

    def count(self) -> int:
        found = re.findall(rb"mesg=(\d+)", self.out.read_bytes()[-4096:])
        return int(found[-1]) if found else 0


def smtp_source(port: int, sessions: int, messages: int, size: int) -> float:
    """Seconds smtp-source takes to send ``messages`` of ``size`` bytes over ``sessions`` reused connections."""
    payload = max(size - SOURCE_HEADER_BYTES, 100)
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(payload), "-d",
           "-f", "bench@source.example", "-t", "sink@sink.example", f"127.0.0.1:{port}"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def start_redis(tmp: Path) -> tuple[str, subprocess.Popen[Any]]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return f"redis://127.0.0.1:{port}", proc


def pg_backends(url: str) -> list[int]:
    """PostgreSQL server processes serving the bench database (their CPU is part of the cost)."""
    name = url.rsplit("/", 1)[1]
    with create_engine(PG_ADMIN).connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": name})]


# ----------------------------------------------------------------------------------------------- data


def seed(url: str, subscribers: int, issues: int, sample: bool) -> list[int]:
    """Import the demo's articles, add ``subscribers`` (a third per language) and create ``issues``
    identical draft issues; returns their numbers."""
    from newsletter.articles import import_articles
    from newsletter.demo import DEMO_NOTES, DEMO_TITLES, FIRST, LAST, SAMPLE_DIR, ZH_HANT_NAMES, ZH_NAMES, corpus_paths, pick_articles
    from newsletter.issues import create_issue
    from newsletter.models import Subscriber, utcnow

    upgrade(url)
    settings = load_settings(
        {"DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "bench-secret-key", "NEWSLETTER_BASE_URL": "https://news.example.org"}
    )
    en_path, zh_path, real = corpus_paths(settings)
    if sample or not real:
        en_path, zh_path, real = SAMPLE_DIR / "articles-en.jsonl", SAMPLE_DIR / "articles-zh-Hans.jsonl", False
    with session_factory(url)() as session:
        started = time.perf_counter()
        for path in (en_path, zh_path):
            import_articles(session, path)
        print(f"setup: articles from {'the shared corpora' if real else 'the bundled sample'} in {time.perf_counter() - started:.1f} s")
        now = utcnow()
        for start in range(0, subscribers, 10000):
            rows = []
            for i in range(start, min(subscribers, start + 10000)):
                lang = ("en", "zh-Hans", "zh-Hant")[i % 3]
                name = {"en": f"{FIRST[i % 10]} {LAST[(i // 10) % 10]}", "zh-Hans": ZH_NAMES[i % 10], "zh-Hant": ZH_HANT_NAMES[i % 10]}[
                    lang
                ]
                rows.append({"email": f"reader{i:06d}@example.com", "name": name, "lang": lang, "topics": [], "attributes": {},
                             "status": "active", "created_at": now})  # fmt: skip
            session.execute(insert(Subscriber), rows)
        session.commit()
        # A real subscriber list is old and analysed by autovacuum; a list inserted a second ago has no statistics,
        # and PostgreSQL then reads 100 subscribers by id with a scan of the whole table (until autovacuum's
        # first pass, a minute or so into the first run). The deliveries are left as planning leaves them.
        session.execute(text("ANALYZE subscribers"))
        session.commit()
        numbers = []
        for _ in range(issues):
            issue = create_issue(session, pick_articles(session, real), titles=DEMO_TITLES[real], notes=DEMO_NOTES[real])
            session.commit()
            numbers.append(issue.number)
    return numbers


def mean_message_size(settings: Settings, issue_id: int) -> int:
    """Mean bytes of the messages of an issue, built the email package's way for one subscriber per
    language and weighted by the deliveries per language."""
    from newsletter.links import preferences_url, unsubscribe_url
    from newsletter.mime import Envelope, build_message, to_bytes
    from newsletter.models import Delivery, Edition, Subscriber
    from newsletter.rendering import greeting, personalise

    total = count = 0
    with session_factory(settings.database_url)() as session:
        per_lang = dict(
            session.execute(select(Delivery.lang, func.count()).where(Delivery.issue_id == issue_id).group_by(Delivery.lang)).all()
        )
        for edition in session.scalars(select(Edition).where(Edition.issue_id == issue_id)):
            if not per_lang.get(edition.lang) or edition.html is None or edition.text is None:
                continue
            delivery, sub = session.execute(
                select(Delivery, Subscriber).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.issue_id == issue_id, Delivery.lang == edition.lang).limit(1)
            ).one()  # fmt: skip
            values = {"GREETING": greeting(edition.lang, sub.name), "EMAIL": sub.email,
                      "UNSUBSCRIBE_URL": unsubscribe_url(settings, sub.id, issue_id),
                      "PREFERENCES_URL": preferences_url(settings, sub.id)}  # fmt: skip
            env = Envelope(settings.from_address, sub.email, sub.name, edition.subject or "", delivery.message_id, settings.list_id,
                           values["UNSUBSCRIBE_URL"], edition.lang)  # fmt: skip
            size = len(
                to_bytes(
                    build_message(env, personalise(edition.text, values, escape=False), personalise(edition.html, values, escape=True))
                )
            )
            total += size * per_lang[edition.lang]
            count += per_lang[edition.lang]
    return total // max(count, 1)


# ----------------------------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    n: int
    sent: int
    end_to_end: float
    send_phase: float
    stages: dict[str, float]
    premailer: int
    cpu_ms: dict[str, float]
    rss_mib: dict[str, float]
    sink_count: int
    load_start: str
    load_end: str
    status: str
    source_rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.sent / self.end_to_end if self.end_to_end else 0.0

    @property
    def send_rate(self) -> float:
        return self.sent / self.send_phase if self.send_phase else 0.0


def ledger_figures(url: str, issue_id: int) -> tuple[Counter[str], float, float | None]:
    """(deliveries per status, send phase seconds, issue finished_at as epoch seconds)."""
    from newsletter.models import Delivery, Issue

    with session_factory(url)() as session:
        states = Counter(
            {
                str(s): n
                for s, n in session.execute(
                    select(Delivery.status, func.count()).where(Delivery.issue_id == issue_id).group_by(Delivery.status)
                )
            }
        )
        first, last = session.execute(
            select(func.min(Delivery.first_attempt_at), func.max(Delivery.sent_at)).where(Delivery.issue_id == issue_id)
        ).one()
        finished = session.get_one(Issue, issue_id).finished_at
    phase = (last - first).total_seconds() if first and last else 0.0
    return states, phase, finished.timestamp() if finished else None


def first_sent_at(url: str, issue_id: int) -> float | None:
    """When the relay accepted the issue's first message (epoch seconds), from the ledger."""
    from newsletter.models import Delivery

    with session_factory(url)() as session:
        first = session.scalar(select(func.min(Delivery.sent_at)).where(Delivery.issue_id == issue_id))
    return first.timestamp() if first else None


def stage_times(events: list[dict[str, Any]], since: float) -> tuple[dict[str, float], int]:
    tasks = [e for e in events if e["ev"] == "task" and e["start"] >= since]
    stages = {}
    sends = [e for e in tasks if e["name"] == "newsletter.send_batch"]
    for label, name in STAGES.items():
        runs = [e for e in tasks if e["name"] == name]
        # Embedded (eager) mode runs the send batches inside plan_deliveries: count them as sending only.
        nested = sum(s["end"] - s["start"] for e in runs for s in sends if s["pid"] == e["pid"] and e["start"] <= s["start"] <= e["end"])
        stages[label] = sum(e["end"] - e["start"] for e in runs) - nested
    if sends:
        stages["send"] = max(e["end"] for e in sends) - min(e["start"] for e in sends)
        stages["send tasks"] = len(sends)
    premailer = sum(1 for e in events if e["ev"] == "premailer" and e.get("t", since) >= since)
    return stages, premailer


def wait_final(url: str, issue_id: int, timeout: float) -> str:
    from newsletter.models import Issue

    factory = session_factory(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with factory() as session:
            status = str(session.get_one(Issue, issue_id).status)
        if status in ("sent", "failed", "paused", "cancelled"):
            return status
        time.sleep(0.05)
    return "timeout"


class Profiler:
    """py-spy record of a process and its children, as collapsed stacks, summarised into a text top."""

    def __init__(self, pid: int, out: Path, label: str) -> None:
        self.raw = out / f"{label}.raw.txt"
        self.top = out / f"{label}.top.txt"
        out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                "250",
                "--format",
                "raw",
                "-o",
                str(self.raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach

    def finish(self) -> Path:
        stop(self.proc, signal.SIGINT, timeout=60)
        summarise_profile(self.raw, self.top)
        return self.top


def summarise_profile(raw: Path, out: Path, top: int = 30) -> None:
    """Self and total samples per function from py-spy's collapsed stacks, idle frames left out."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    idle = ("select (selectors", "poll (selectors", "wait (threading", "_recv_into", "recv_into", "read (multiprocessing", "_readinto")
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames or any(frames[-1].startswith(i) for i in idle):
            continue
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    with out.open("w") as handle:
        handle.write(f"{samples} busy samples (idle waits left out)\n\n== self\n")
        for name, n in own.most_common(top):
            handle.write(f"{100 * n / max(samples, 1):5.1f}%  {name}\n")
        handle.write("\n== total (inclusive; Celery, billiard, kombu and click frames left out)\n")
        plumbing = ("celery/", "billiard/", "kombu/", "click/", "vine/", "(<string>", "<module>")
        shown = [(name, n) for name, n in total.most_common() if not any(p in name for p in plumbing)]
        for name, n in shown[:top]:
            handle.write(f"{100 * n / max(samples, 1):5.1f}%  {name}\n")


def instrument_env(tmp: Path, events: Path) -> dict[str, str]:
    """Environment that loads bench/_instrument.py into every Python process (a sitecustomize on PYTHONPATH)."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('BENCH_EVENTS'):\n"
        f"    sys.path.insert(0, {str(BENCH)!r})\n"
        "    import _instrument\n"
        "    _instrument.install(os.environ['BENCH_EVENTS'])\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), str(BENCH)]), "BENCH_EVENTS": str(events)}


def start_workers(
    app: str, env: dict[str, str], workers: int, concurrency: int, tmp: Path, queues: str | None
) -> list[subprocess.Popen[Any]]:
    procs = []
    for i in range(workers):
        log = tmp / f"{app}-worker{i}.log"
        cmd = ["celery", "-A", app, "worker", "-c", str(concurrency), "-n", f"{app}{i}@%h", "--loglevel=INFO"]
        if queues:
            cmd += ["-Q", queues]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    for i, proc in enumerate(procs):
        log = tmp / f"{app}-worker{i}.log"
        deadline = time.monotonic() + 120
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    return procs


def processes(workers: list[subprocess.Popen[Any]], extra: dict[str, int]) -> dict[str, int]:
    named = dict(extra)
    for i, w in enumerate(workers):
        named[f"worker{i} main"] = w.pid
        for j, child in enumerate(sorted(children(w.pid))):
            named[f"worker{i} pool{j}"] = child
    return named


def product_run(
    args: argparse.Namespace, settings: Settings, number: int, workers: list[subprocess.Popen[Any]], sink: Sink, events: Path,
    others: dict[str, int], profile: Path | None,
) -> RunResult:  # fmt: skip
    from newsletter.runner import start_publish

    procs = processes(workers, others)
    for pid in pg_backends(settings.database_url):
        procs[f"postgres {pid}"] = pid
    before = {k: cpu_seconds(p) for k, p in procs.items()}
    sink_before = sink.count()
    profiler = Profiler(workers[0].pid, profile, "worker") if profile else None
    load_start = loadavg()
    t0 = time.time()
    issue_id, _ = start_publish(settings, number)
    status = wait_final(settings.database_url, issue_id, timeout=args.timeout)
    load_end = loadavg()
    for pid in pg_backends(settings.database_url):
        procs.setdefault(f"postgres {pid}", pid)
    cpu = {k: cpu_seconds(p) - before.get(k, 0.0) for k, p in procs.items()}
    rss = {k: peak_rss_mib(p) for k, p in procs.items() if k.startswith("worker")}
    if profiler:
        print(f"profile: {profiler.finish()}")
    states, phase, finished = ledger_figures(settings.database_url, issue_id)
    first_out = first_sent_at(settings.database_url, issue_id)
    run_events = _instrument.read(str(events))
    stages, premailer = stage_times(run_events, t0)
    sent = states.get("sent", 0)
    by_pid = Counter()
    for e in run_events:
        if e["ev"] == "task" and e["start"] >= t0:
            by_pid[e["pid"]] += e.get("sent", 0)
    sent_by = {k: by_pid[p] for k, p in procs.items() if by_pid.get(p)}
    own = {k: 1000 * cpu[k] / n for k, n in sent_by.items()}
    postgres = sum(v for k, v in cpu.items() if k.startswith("postgres"))
    cpu = {k: v for k, v in cpu.items() if not k.startswith("postgres")} | {"postgres (bench db)": postgres}
    time.sleep(0.3)  # the sink's counter is written when the connection quits
    n = sum(states.values())
    return RunResult(
        n=n, sent=sent, end_to_end=(finished or time.time()) - t0, send_phase=phase, stages=stages, premailer=premailer,
        cpu_ms={k: 1000 * v / max(sent, 1) for k, v in cpu.items()}, rss_mib=rss, sink_count=sink.count() - sink_before,
        load_start=load_start, load_end=load_end, status=status,
        extra={"states": dict(states), "issue_id": issue_id, "own": own, "sent_by": sent_by,
               "first_out": first_out - t0 if first_out else None},
    )  # fmt: skip


def print_run(i: int, r: RunResult) -> None:
    print(f"\nrun {i}: issue {r.status}; {r.sent:,} sent of {r.n:,} deliveries ({r.extra['states']}); sink counted {r.sink_count:,}")
    print(f"  load average at start {r.load_start}, at end {r.load_end}")
    print(f"  end to end {r.end_to_end:6.2f} s  {r.rate:8,.0f} emails/s")
    print(f"  send phase {r.send_phase:6.2f} s  {r.send_rate:8,.0f} emails/s")
    if r.extra.get("first_out") is not None:
        print(f"  first message accepted by the relay {r.extra['first_out']:.2f} s after the publish request")
    if r.source_rate:
        print(f"  smtp-source same sink, sessions and size: {r.source_rate:,.0f} messages/s; "
              f"product/smtp-source {r.rate / r.source_rate:.3f}"
              f" end to end, {r.send_rate / r.source_rate:.3f} send phase")  # fmt: skip
    print("  stages (task run time, s): " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.stages.items()))
    print(f"  premailer calls: {r.premailer}")
    print("  CPU ms per message (its CPU / all messages): " + ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_ms.items()))
    if r.extra.get("own"):
        print(
            "  CPU ms per message it sent: " + ", ".join(f"{k} {v:.2f} ({r.extra['sent_by'][k]:,} sent)" for k, v in r.extra["own"].items())
        )
    print("  peak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in r.rss_mib.items()))


def naive_run(args: argparse.Namespace, url: str, redis_url: str, sink: Sink, tmp: Path, issue_number: int) -> tuple[int, float, int]:
    """(messages, seconds, sink count) of the naive app sending to the first subscribers."""
    import naive_celery
    import redis

    from newsletter.models import Issue, Subscriber

    broker = redis_url + "/1"
    env = {
        **os.environ,
        "PYTHONPATH": str(BENCH),
        "NAIVE_BROKER": broker,
        "NAIVE_DATABASE_URL": url,
        "NAIVE_SMTP": f"127.0.0.1:{sink.port}",
    }
    env.pop("BENCH_EVENTS", None)
    workers = start_workers("naive_celery", env, args.workers, args.concurrency, tmp, None)
    try:
        naive_celery.app.conf.broker_url = broker
        r = redis.Redis.from_url(broker)
        r.delete(naive_celery.DONE_KEY)
        with session_factory(url)() as session:
            issue_id = session.scalar(select(Issue.id).where(Issue.number == issue_number))
            ids = list(session.scalars(select(Subscriber.id).order_by(Subscriber.id).limit(args.naive_subscribers)))
        before = sink.count()
        started = time.perf_counter()
        for sid in ids:
            naive_celery.send_one.delay(sid, issue_id)
        deadline = time.monotonic() + args.timeout
        while int(r.get(naive_celery.DONE_KEY) or 0) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        time.sleep(0.3)
        return int(r.get(naive_celery.DONE_KEY) or 0), elapsed, sink.count() - before
    finally:
        for w in workers:
            stop(w)


def real_mode(args: argparse.Namespace, tmp: Path) -> None:
    print(f"load average at start: {loadavg()}  ({os.cpu_count()} CPUs)")
    sink = Sink.start(tmp, data_delay=1 if args.slow else None)
    redis_url, redis_proc = start_redis(tmp)
    events = tmp / "events.jsonl"
    workers: list[subprocess.Popen[Any]] = []
    sessions = args.connections or args.workers * args.concurrency
    try:
        with pg_database() as url:
            numbers = seed(url, args.subscribers, args.runs, args.sample)
            smtp_url = f"smtp://127.0.0.1:{sink.port}" + (f"?connections={args.connections}" if args.connections else "")
            env_vars = {
                "DATABASE_URL": url, "REDIS_URL": redis_url + "/0", "SMTP_URL": smtp_url, "NEWSLETTER_HOME": str(tmp / "home"),
                "NEWSLETTER_SECRET_KEY": "bench-secret-key", "NEWSLETTER_BASE_URL": "https://news.example.org",
            }  # fmt: skip
            settings = load_settings(env_vars)
            wenv = {**os.environ, **env_vars, **instrument_env(tmp, events)}
            workers = start_workers("tasks", wenv, args.workers, args.concurrency, tmp, "render,plan,send,notices")
            others = {"redis": redis_proc.pid, "smtp-sink": sink.proc.pid}
            results = []
            for i, number in enumerate(numbers, 1):
                r = product_run(args, settings, number, workers, sink, events, others, args.profile if i == 1 else None)
                size = mean_message_size(settings, r.extra["issue_id"])
                m = min(r.sent, args.source_messages) or 1000
                secs = smtp_source(sink.port, sessions, m, size)
                r.source_rate = m / secs
                r.extra["size"] = size
                print_run(i, r)
                print(f"  mean message size {size:,} bytes; smtp-source -s {sessions} -m {m} -d")
                results.append(r)
            for w in workers:
                stop(w)
            workers = []
            naive = None
            if args.naive_subscribers:
                sent, secs, counted = naive_run(args, url, redis_url, sink, tmp, numbers[0])
                naive = sent / secs
                print(f"\nnaive baseline (one task per subscriber, {args.workers}x{args.concurrency} processes): "
                      f"{sent:,} sent in {secs:.2f} s = {naive:,.0f} emails/s; sink counted {counted:,}")  # fmt: skip
            med = statistics.median
            shape = f"{len(results)} run(s), N={args.subscribers:,}, {args.workers} worker x -c {args.concurrency}"
            print(f"\nsummary ({shape}); load average now {loadavg()}")
            rates, send_rates = [r.rate for r in results], [r.send_rate for r in results]
            print(f"  end to end   median {med(rates):8,.0f} emails/s   runs: {', '.join(f'{x:,.0f}' for x in rates)}")
            print(f"  send phase   median {med(send_rates):8,.0f} emails/s   runs: {', '.join(f'{x:,.0f}' for x in send_rates)}")
            firsts = [r.extra["first_out"] for r in results if r.extra.get("first_out") is not None]
            if firsts:
                shown = ", ".join(f"{x:.2f}" for x in firsts)
                print(f"  first message out  run 1 {firsts[0]:.2f} s; median {med(firsts):.2f} s   runs: {shown}")
            e2e, phases = med(r.end_to_end for r in results), med(r.send_phase for r in results)
            print(f"  end to end   median {e2e:8.2f} s   send phase median {phases:.2f} s")
            print(f"  smtp-source  median {med(r.source_rate for r in results):8,.0f} messages/s")
            print(f"  product/smtp-source  median {med(r.rate / r.source_rate for r in results):.3f} end to end, "
                  f"{med(r.send_rate / r.source_rate for r in results):.3f} send phase")  # fmt: skip
            if naive:
                print(f"  product/naive  {med(r.rate for r in results) / naive:.1f}x  (naive {naive:,.0f} emails/s)")
    finally:
        for w in workers:
            stop(w)
        stop(sink.proc)
        stop(redis_proc)


def embedded_child(args: argparse.Namespace) -> None:
    """Run inside a fresh process: publish one issue the way `newsletter issue publish` does without services."""
    import resource

    _instrument.install(os.environ["BENCH_EVENTS"])
    from newsletter.runner import follow, start_publish

    settings = load_settings()
    t0 = time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    issue_id, thread = start_publish(settings, args.embedded_child)
    outcome = follow(settings, issue_id)  # as `newsletter issue publish` follows it (poll 0.5 s)
    if thread is not None:
        thread.join()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    print(
        json.dumps(
            {"t0": t0, "t1": time.time(), "issue_id": issue_id, "status": outcome.status, "cpu": cpu, "rss": peak_rss_mib(os.getpid())}
        )
    )


def embedded_mode(args: argparse.Namespace, tmp: Path) -> None:
    print(f"load average at start: {loadavg()}  ({os.cpu_count()} CPUs)")
    url = f"sqlite:///{tmp / 'newsletter.db'}"
    numbers = seed(url, args.subscribers, args.runs, args.sample)
    events = tmp / "events.jsonl"
    rates = []
    for i, number in enumerate(numbers, 1):
        outbox = tmp / f"outbox{i}"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SMTP_URL")}
        env.update({"DATABASE_URL": url, "NEWSLETTER_HOME": str(tmp / "home"), "NEWSLETTER_OUTBOX": str(outbox),
                    "BENCH_EVENTS": str(events),
                    "NEWSLETTER_SECRET_KEY": "bench-secret-key", "NEWSLETTER_BASE_URL": "https://news.example.org"})  # fmt: skip
        load_start = loadavg()
        cmd = [sys.executable, __file__, "--embedded-child", str(number)]
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            raw = args.profile / "embedded.raw.txt"
            cmd = ["py-spy", "record", "--nonblocking", "--rate", "250", "--format", "raw", "-o", str(raw), "--", *cmd]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        child = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])  # py-spy prints its own lines too
        if args.profile:
            summarise_profile(args.profile / "embedded.raw.txt", args.profile / "embedded.top.txt")
            print(f"profile: {args.profile / 'embedded.top.txt'}")
        states, phase, finished = ledger_figures(url, child["issue_id"])
        stages, premailer = stage_times(_instrument.read(str(events)), child["t0"])
        sent = states.get("sent", 0)
        files = len(list((outbox / "new").glob("*.eml")))
        r = RunResult(n=sum(states.values()), sent=sent, end_to_end=(finished or child["t1"]) - child["t0"], send_phase=phase,
                      stages=stages,
                      premailer=premailer, cpu_ms={"publishing process": 1000 * child["cpu"] / max(sent, 1)},
                      rss_mib={"publishing process": child["rss"]}, sink_count=files, load_start=load_start, load_end=loadavg(),
                      status=child["status"], extra={"states": dict(states)})  # fmt: skip
        print_run(i, r)
        print("  (the 'sink' is the outbox: .eml files written)")
        rates.append(r.rate)
    print(f"\nembedded summary: median {statistics.median(rates):,.0f} emails/s end to end into the outbox; load average now {loadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, help="audience size (default 10,000; 200 with --slow)")
    parser.add_argument("--runs", type=int, default=1, help="publishes (one new issue each), each followed by smtp-source")
    parser.add_argument("--naive-subscribers", type=int, default=1000, help="messages the naive baseline sends (0: skip it)")
    parser.add_argument("--workers", type=int, default=1, help="celery worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (-c)")
    parser.add_argument("--source-messages", type=int, default=20000, help="most messages smtp-source sends per run")
    parser.add_argument("--embedded", action="store_true", help="the embedded default: SQLite, in-process worker, outbox")
    parser.add_argument("--slow", action="store_true", help="smtp-sink -w 1 (each DATA answered after 1 s)")
    parser.add_argument(
        "--connections",
        type=int,
        help="SMTP connections in total (SMTP_URL ?connections=; default 50 with --slow, else one per pool process)",
    )
    parser.add_argument("--sample", action="store_true", help="use the bundled sample articles even when the shared corpora exist")
    parser.add_argument("--profile", type=Path, help="folder for a py-spy profile of the first run (raw stacks and a text top)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a publish")
    parser.add_argument("--embedded-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embedded_child is not None:
        embedded_child(args)
        return
    if args.subscribers is None:
        args.subscribers = 200 if args.slow else 10000
    if args.slow and args.connections is None:
        args.connections = 50
    with tempfile.TemporaryDirectory(prefix="nl-bench-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)
        (embedded_mode if args.embedded else real_mode)(args, tmp)


if __name__ == "__main__":
    main()
