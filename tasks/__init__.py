"""Celery tasks (thin wrappers over `newsletter`). Run a worker with ``celery -A tasks worker``."""

from tasks.app import make_app

app = make_app()

from tasks import publish  # noqa: E402  (registers the tasks on `app`)

__all__ = ["app", "publish"]
