"""The newsletter publishing service: the domain, in plain Python (Celery lives in ``tasks``)."""
