"""Flower, the Celery monitor, works against our broker and sees our workers and tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT
from tests.smtp_server import free_port

pytestmark = pytest.mark.integration


def test_flower_lists_the_worker_and_its_tasks(sqlite_url: str, redis_available: str, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_available).flushdb()
    env = {
        **os.environ,
        "REDIS_URL": redis_available,
        "DATABASE_URL": sqlite_url,  # migrated: a worker refuses to start on a schema it does not know
        "NEWSLETTER_SECRET_KEY": "flower-secret-key",
        "NEWSLETTER_BASE_URL": "https://news.example.org",
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "worker", "-c", "1", "-n", "flowertest@%h", "--loglevel=WARNING"],
                         cwd=ROOT, env=env, stdout=(tmp_path / "w.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"],
                         cwd=ROOT, env=env, stdout=(tmp_path / "f.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True),
    ]  # fmt: skip
    try:
        deadline, workers = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=10) as response:
                    workers = json.load(response)
                if any(name.startswith("flowertest@") and info.get("registered") for name, info in workers.items()):
                    break
            except OSError:
                pass
            time.sleep(1)
        name = next(n for n in workers if n.startswith("flowertest@"))
        assert "newsletter.send_batch" in workers[name]["registered"]
        assert {q["name"] for q in workers[name]["active_queues"]} == {"render", "plan", "send", "notices"}  # every queue by default
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
