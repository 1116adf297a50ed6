# syntax=docker/dockerfile:1
# The newsletter service image: one image for the web pages, the Celery worker and beat, and the
# `newsletter` CLI (migrations, imports, publishing). See compose.yaml for how the services use it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NEWSLETTER_HOME=/srv/newsletter/var

# Build from the project source only (see .dockerignore); the wheel bundles templates/ and the
# migrations, so the running process needs nothing from this folder.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY newsletter ./newsletter
COPY tasks ./tasks
COPY templates ./templates
RUN pip install ".[ops]" && rm -rf /build

# Unprivileged runtime user; its working directory holds NEWSLETTER_HOME (SQLite fallback, outbox)
# and Celery beat's schedule file, so it must be writable by that user.
RUN groupadd --system --gid 10001 newsletter \
    && useradd --system --uid 10001 --gid newsletter --home-dir /srv/newsletter --shell /usr/sbin/nologin newsletter \
    && mkdir -p /srv/newsletter/var \
    && chown -R newsletter:newsletter /srv/newsletter
WORKDIR /srv/newsletter
USER newsletter:newsletter

EXPOSE 8000
CMD ["newsletter", "web", "--host", "0.0.0.0", "--port", "8000"]
