"""Benchmark: the send path alone, one process, one pooled connection, two ways in the same run.

`send_batch` on one pooled SMTP connection (no ``?connections=``, as each pool process of a worker) sends its
messages in one of two ways, alternating batch by batch so both see the same machine (`WAYS`):

* ``overlapped`` (the product): message k's body is written with k+1's MAIL FROM / RCPT TO / DATA behind it
  (RFC 2920 §3.1), then message k-1's record is begun and message k+2 built, and only then is k's reply read
  (`SmtpMailer.send_begin` / ``send_end``; `newsletter.delivery.send._send_pipelined`);
* ``next-envelope`` (main before it): the same pipelined envelope, but the whole send (write and reply) first,
  then k-1's record settled and k's begun, then k+1 built.

Both record as the product does: a message's UPDATE is sent through libpq without waiting and its reply read
one message later. Until branch sendwait the two ways were ``next-envelope`` and ``per-message`` (each
message's MAIL/RCPT/DATA in one write of its own: two round trips per message); figures for those below.

It seeds a throw-away PostgreSQL database (as bench/publish.py: the shared corpora or ``--sample``, a third of
the subscribers per language), renders and plans one issue in this process, starts ``smtp-sink`` on a free
loopback port, then sends. Printed per way: CPU ms per message of this process, of PostgreSQL's server
processes and of smtp-sink, wall ms per message, and the load average (the machine is usually shared: compare
the two ways of the same run).

    python bench/send_path.py                       # 6,000 subscribers
    python bench/send_path.py --subscribers 3000 --sample
    python bench/send_path.py --rtt-ms 2            # a relay 2 ms away (a proxy delays each direction by 1 ms)

Overlapped against next-envelope (branch sendwait, 3,000 subscribers, load 1.6-2.5): wall 0.86x and 0.87x with
``--rtt-ms 2`` (234/202 and 220/191 emails/s), 0.98x and 0.94x on loopback; CPU of this process 0.97-0.99x.

Measured on the 2-core machine while other jobs ran (load average in brackets; ms of CPU per message, next-envelope
against per-message in the same run): on loopback, this process 0.737/0.785 [8.4-9.3], 0.828/0.831 [9.5-12.2],
0.757/0.803 [12.1-9.3], 0.685/0.679 [6.6-6.5], 0.763/0.781 [6.5-7.2]; smtp-sink 0.514/0.552, 0.566/0.589,
0.566/0.580, 0.500/0.548, 0.584/0.566; PostgreSQL the same within noise (0.32-0.42); wall dominated by the
load (102-199 emails/s both ways). The round trip saved is tens of µs on loopback: no measurable change. With
``--rtt-ms 2``: 194/127 emails/s [5.2-5.0] and 142/103 [7.3-7.2] (wall 5.17/7.86 and 7.03/9.75 ms per message),
CPU of this process 0.692/0.751 and 0.741/0.841. bench/publish.py (10,000, 1 worker x -c 2, loopback, load
8-10, main alternating): 285 and 269 emails/s end to end against 263 and 269 for main, CPU per message of all
processes 1.85 and 1.76 ms against 1.78 and 1.74: equal within noise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scratch_db import pg_database
from publish import Sink, cpu_seconds, free_port, loadavg, pg_backends, seed, stop, wait_port
from sqlalchemy import select

from newsletter import publishing
from newsletter.config import load_settings
from newsletter.db import session_factory
from newsletter.delivery import send
from newsletter.delivery.pool import ConnectionPool, PooledMailer, pool_for
from newsletter.models import Delivery, Issue

BATCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subscribers", type=int, default=6000)
    parser.add_argument("--sample", action="store_true", help="the bundled sample articles even when the shared corpora exist")
    parser.add_argument(
        "--rtt-ms", type=float, default=0.0, help="a relay this far away: a delaying proxy (bench/_delay_proxy.py) in front of smtp-sink"
    )
    args = parser.parse_args()
    print(f"load average at start: {loadavg()}  ({os.cpu_count()} CPUs); relay round trip: {args.rtt_ms or 'loopback'} ms")
    proxy: subprocess.Popen[bytes] | None = None
    ways = tuple(WAYS)
    with tempfile.TemporaryDirectory() as tmp_name, pg_database() as url:
        tmp = Path(tmp_name)
        sink = Sink.start(tmp)
        try:
            (number,) = seed(url, args.subscribers, 1, args.sample)
            port = sink.port
            if args.rtt_ms:
                port = free_port()
                proxy = subprocess.Popen(
                    [sys.executable, str(Path(__file__).parent / "_delay_proxy.py"), str(port), str(sink.port), str(args.rtt_ms)]
                )
                wait_port(port)
            smtp_url = f"smtp://127.0.0.1:{port}"
            settings = load_settings(
                {"DATABASE_URL": url, "SMTP_URL": smtp_url, "NEWSLETTER_HOME": str(tmp / "home"),
                 "NEWSLETTER_SECRET_KEY": "bench-secret-key", "NEWSLETTER_BASE_URL": "https://news.example.org"}
            )  # fmt: skip
            source = _Ways(pool_for(smtp_url, None, settings.smtp_timeout))
            with session_factory(url)() as session:
                issue = session.scalar(select(Issue).where(Issue.number == number))
                assert issue is not None
                issue_id = issue.id
                publishing.request_publish(session, settings, issue)
                publishing.attach_related(session, settings, issue_id)
                publishing.render_editions(session, settings, issue_id)
                publishing.plan_deliveries(session, settings, issue_id, lambda *_: None)
                ids = list(session.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id).order_by(Delivery.id)))
                batches = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)]
                # The first two batches warm up (templates, prepared statements, the connection); not counted.
                for batch in batches[:2]:
                    send.send_batch(session, settings, issue_id, batch, source)
                totals = {w: Counter[str]() for w in ways}
                spent = {w: {"worker": 0.0, "postgres": 0.0, "smtp-sink": 0.0, "wall": 0.0} for w in ways}
                for n, batch in enumerate(batches[2:]):
                    way = ways[n % 2]
                    source.pipelines, source.splits = WAYS[way]
                    backends = pg_backends(url)
                    before = (time.process_time(), sum(cpu_seconds(p) for p in backends), cpu_seconds(sink.proc.pid), time.perf_counter())
                    totals[way].update(send.send_batch(session, settings, issue_id, batch, source).outcomes)
                    backends += [p for p in pg_backends(url) if p not in backends]
                    after = (time.process_time(), sum(cpu_seconds(p) for p in backends), cpu_seconds(sink.proc.pid), time.perf_counter())
                    for key, b, a in zip(("worker", "postgres", "smtp-sink", "wall"), before, after, strict=True):
                        spent[way][key] += a - b
        finally:
            stop(sink.proc)
            if proxy is not None:
                stop(proxy)
    print(f"load average at end: {loadavg()}")
    for way in ways:
        sent = totals[way]["sent"]
        per = {k: 1000 * v / max(sent, 1) for k, v in spent[way].items()}
        print(
            f"{way:>13}: {sent:,} sent ({dict(+totals[way])}); ms per message: CPU this process {per['worker']:.3f},"
            f" PostgreSQL {per['postgres']:.3f}, smtp-sink {per['smtp-sink']:.3f}; wall {per['wall']:.3f}"
            f" ({sent / max(spent[way]['wall'], 1e-9):,.0f} emails/s)"
        )
    (p, t), (pw, tw) = ([spent[w][k] / max(totals[w]["sent"], 1) for w in ways] for k in ("worker", "wall"))
    print(f"{ways[0]}/{ways[1]}: CPU of this process {p / t:.2f}, wall {pw / tw:.2f}")


# way -> (pipelines: the next envelope behind each body, splits: work between a body's write and its reply)
WAYS = {"overlapped": (True, True), "next-envelope": (True, False)}


class _Ways:
    """The pool, lending its connections with the next message's envelope pipelined (`pipelines`) or not,
    and their send split in a write and a read half (`splits`) or not."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool, self.connections, self.pipelines, self.splits = pool, pool.connections, True, True

    def get(self, wait: bool) -> PooledMailer | None:
        mailer = self.pool.get(wait)
        if mailer is not None:
            mailer.pipelines, mailer.splits = self.pipelines, self.splits
        return mailer


if __name__ == "__main__":
    main()
