"""The naive baseline for bench/publish.py: a tutorial Celery app, one task per subscriber.

Each task loads its subscriber and the issue's articles with SQL, renders the issue's email templates
with Jinja2, inlines the CSS with premailer, builds an `EmailMessage` and sends it over a new SMTP
connection. It has no ledger, no retries and no related articles (all of which make it cheaper than the
product). Self-contained on purpose: it shares only the template files and the gettext catalogs.

    NAIVE_DATABASE_URL=... NAIVE_BROKER=redis://... NAIVE_SMTP=127.0.0.1:2525 \
        celery -A naive_celery worker -c 2       # with bench/ on PYTHONPATH; bench/publish.py does this
"""

from __future__ import annotations

import logging
import os
import smtplib
from email.message import EmailMessage
from functools import cache
from typing import Any

import jinja2
import redis
from celery import Celery
from markupsafe import Markup
from premailer import Premailer
from sqlalchemy import Engine, create_engine, text

from newsletter.branding import DEFAULT_LIST_NAME as LIST_NAME
from newsletter.branding import Branding
from newsletter.i18n import gettext_for
from newsletter.rendering import templates_dir

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER", "memory://"))
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True, worker_hijack_root_logger=False)
DONE_KEY = "naive:done"


@cache
def engine() -> Engine:
    return create_engine(os.environ["NAIVE_DATABASE_URL"])


@cache
def counter() -> redis.Redis:
    return redis.Redis.from_url(os.environ["NAIVE_BROKER"])


@cache
def jinja(autoescape: bool) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(templates_dir()), autoescape=autoescape, trim_blocks=True, lstrip_blocks=True)


def translator(lang: str, autoescape: bool) -> Any:
    gettext = gettext_for(lang)

    def translate(message: str, **params: Any) -> str:
        value = gettext(message)
        if autoescape:
            return Markup(value) % params if params else Markup(value)
        return value % params if params else value

    return translate


@app.task(name="naive.send_one")
def send_one(subscriber_id: int, issue_id: int) -> None:
    """Render, inline, build and send one subscriber's message."""
    with engine().connect() as conn:
        email, name, lang = conn.execute(text("SELECT email, name, lang FROM subscribers WHERE id = :i"), {"i": subscriber_id}).one()
        source = "zh-Hans" if lang.startswith("zh") else "en"
        number, title = conn.execute(
            text("SELECT i.number, e.title FROM issues i JOIN editions e ON e.issue_id = i.id WHERE i.id = :i AND e.lang = :l"),
            {"i": issue_id, "l": source},
        ).one()
        articles = [
            {"title": t, "summary": s, "url": u or "", "category": c}
            for t, s, u, c in conn.execute(
                text(
                    "SELECT a.title, a.summary, a.url, a.category FROM articles a JOIN issue_articles ia ON ia.article_id = a.id"
                    " WHERE ia.issue_id = :i AND a.lang = :l ORDER BY ia.position"
                ),
                {"i": issue_id, "l": source},
            )
        ]
    web_url = f"https://news.example.org/issues/{number}/{lang}"
    unsubscribe = f"https://news.example.org/unsubscribe/{subscriber_id}.{issue_id}"
    context = {
        "lang": lang, "dir": "ltr", "number": number, "title": title, "date": "", "list_name": LIST_NAME.get(lang, LIST_NAME["en"]),
        "brand": Branding(), "site_url": "https://news.example.org", "languages": [],
        "web_url": web_url, "articles": articles, "related": [], "converted_from": None, "editors_note_html": "",
        "editors_note_text": "", "preheader": articles[0]["title"] if articles else title, "web": False,
        "greeting": f"Hello {name},", "email": email, "unsubscribe_url": unsubscribe,
        "preferences_url": f"https://news.example.org/preferences/{subscriber_id}",
    }  # fmt: skip
    html = jinja(True).get_template("email/issue/body.html").render(context, _=translator(lang, True))
    html = Premailer(
        html, allow_network=False, keep_style_tags=True, disable_validation=True, cssutils_logging_level=logging.CRITICAL
    ).transform()
    body = jinja(False).get_template("email/issue/body.txt").render(context, _=translator(lang, False))
    subject = jinja(False).get_template("email/issue/subject.txt").render(context, _=translator(lang, False))
    msg = EmailMessage()
    msg["From"] = "The Weekly Review <weekly@news.example.org>"
    msg["To"] = f"{name} <{email}>"
    msg["Subject"] = " ".join(subject.split())
    msg["List-Unsubscribe"] = f"<{unsubscribe}>"
    msg.set_content(body)
    msg.add_alternative(html, subtype="html")
    host, port = os.environ["NAIVE_SMTP"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port)) as smtp:
        smtp.send_message(msg)
    counter().incr(DONE_KEY)
