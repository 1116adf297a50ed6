"""Celery tasks (thin wrappers over `newsletter`). Run a worker with ``celery -A tasks worker``.

`tasks.app` defines the app and the process's settings; `tasks.publish` and `tasks.notices` define the tasks on it. This
module only wires them: importing it gives ``celery -A tasks`` the app with every task registered.
"""

# tasks.app must be imported first: it sets up Prometheus's multiprocess storage before tasks.publish
# imports newsletter.metrics, whose unlabelled counters take their storage when they are created.
# isort: off
from tasks.app import app
from tasks import notices, publish

# isort: on

__all__ = ["app", "notices", "publish"]
