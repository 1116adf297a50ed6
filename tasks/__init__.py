"""Celery tasks (thin wrappers over `newsletter`). Run a worker with ``celery -A tasks worker``.

`tasks.app` defines the app and the process's settings; `tasks.publish` defines the tasks on it. This
module only wires them: importing it gives ``celery -A tasks`` the app with every task registered.
"""

from tasks import publish
from tasks.app import app

__all__ = ["app", "publish"]
