"""Measurement hooks for bench/publish.py, loaded into the processes it starts (never by the product).

`install(path)` appends one JSON line per event to ``path``: each premailer call (``{"ev": "premailer"}``)
and each Celery task run (``{"ev": "task", "name", "start", "end", "sent"}``, wall-clock seconds, from the
task_prerun/task_postrun signals, which fire for worker and eager tasks alike). Lines are written with
one ``write`` on an O_APPEND descriptor, so processes writing to the same file do not interleave.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_fd: int | None = None
_started: dict[str, float] = {}


def _emit(event: dict[str, Any]) -> None:
    if _fd is not None:
        os.write(_fd, (json.dumps({"t": time.time(), **event, "pid": os.getpid()}) + "\n").encode())


def install(path: str) -> None:
    """Count premailer calls and time Celery tasks into ``path`` (JSON lines); idempotent."""
    global _fd
    if _fd is not None:
        return
    _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    from celery.signals import task_postrun, task_prerun
    from premailer import Premailer

    transform = Premailer.transform

    def counted(self: Premailer, *args: Any, **kwargs: Any) -> Any:
        _emit({"ev": "premailer"})
        return transform(self, *args, **kwargs)

    Premailer.transform = counted  # type: ignore[method-assign]

    @task_prerun.connect(weak=False)
    def _prerun(task_id: str | None = None, **_: Any) -> None:
        _started[task_id or ""] = time.time()

    @task_postrun.connect(weak=False)
    def _postrun(task_id: str | None = None, task: Any = None, retval: Any = None, **_: Any) -> None:
        start = _started.pop(task_id or "", None)
        if start is not None:
            sent = retval.get("sent", 0) if isinstance(retval, dict) else 0  # send_batch returns its outcome counts
            _emit({"ev": "task", "name": getattr(task, "name", "?"), "start": start, "end": time.time(), "sent": sent})


def read(path: str) -> list[dict[str, Any]]:
    """The events written so far."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []
