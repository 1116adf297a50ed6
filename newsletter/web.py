"""Web pages: view-in-browser editions, one-click unsubscribe (RFC 8058), health check."""

from __future__ import annotations

from flask import Flask, Response, abort, render_template_string, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select, text

from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.metrics import ledger_registry
from newsletter.models import LANGUAGES, Edition, Issue, IssueStatus, Subscriber
from newsletter.subscribers import unsubscribe, update_preferences
from newsletter.tokens import BadToken, verify

PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ title }}</title></head><body style="font-family:Helvetica,Arial,sans-serif;max-width:36em;margin:3em auto;padding:0 1em">
<h1>{{ title }}</h1><p>{{ message }}</p>
{% if form %}<form method="post"><button type="submit" name="confirm" value="1">Unsubscribe</button></form>{% endif %}
</body></html>"""


PREFERENCES = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Your subscription</title></head><body style="font-family:Helvetica,Arial,sans-serif;max-width:36em;margin:3em auto;padding:0 1em">
<h1>Your subscription</h1><p>{{ s.email }}</p>{% if message %}<p role="status">{{ message }}</p>{% endif %}
<form method="post">
<p><label>Language <select name="lang">{% for l in languages %}
<option value="{{ l }}"{% if l == s.lang %} selected{% endif %}>{{ l }}</option>{% endfor %}</select></label></p>
<p><label>Topics (comma-separated) <input name="topics" value="{{ s.topics | join(', ') }}"></label></p>
<p><button type="submit">Save</button></p></form></body></html>"""


def _page(title: str, message: str, status: int = 200, form: bool = False) -> tuple[str, int]:
    return render_template_string(PAGE, title=title, message=message, form=form), status


INVALID_LINK = {"unsubscribe": "This unsubscribe link is not valid.", "preferences": "This preferences link is not valid."}
UNKNOWN = ("Unknown subscriber", "We could not find this subscription.", 404)


def create_app(settings: Settings) -> Flask:
    """The Flask app. Editions are served only once their issue is being or has been sent."""
    app = Flask("newsletter")
    factory = session_factory(settings.database_url)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """200 when the database answers (for load balancers and container health checks)."""
        with factory() as session:
            session.execute(text("SELECT 1"))
        return {"status": "ok"}

    registry = ledger_registry(settings)

    def _verified(token: str, purpose: str) -> int | None:
        """The subscriber id a signed link names, or None when the signature does not hold."""
        try:
            return verify(settings.secret_key, purpose, token)[0]
        except BadToken:
            return None

    @app.get("/metrics")
    def prometheus() -> Response:
        """Ledger metrics (deliveries by state and language, issues by status, queue depth)."""
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/issues/<int:number>/<lang>")
    def edition(number: int, lang: str) -> Response:
        """The "view in browser" page of an edition, once its issue is sending or sent."""
        with factory() as session:
            found = session.execute(
                select(Edition.web_html).join(Issue).where(
                    Issue.number == number, Edition.lang == lang,
                    Issue.status.in_([IssueStatus.SENDING, IssueStatus.SENT]),
                )
            ).scalar_one_or_none()  # fmt: skip
        if not found:
            abort(404)
        return Response(found, mimetype="text/html")

    @app.route("/unsubscribe/<token>", methods=["GET", "POST"])
    def unsubscribe_page(token: str) -> tuple[str, int] | str:
        """GET asks; POST (a person's click, or a mail client's RFC 8058 one-click POST) unsubscribes."""
        subscriber_id = _verified(token, "unsubscribe")
        if subscriber_id is None:
            return _page("Link not valid", INVALID_LINK["unsubscribe"], 400)
        if request.method == "GET":
            # A GET never unsubscribes: mail scanners follow links (RFC 8058 §1).
            return _page("Unsubscribe", "Stop receiving this newsletter?", form=True)
        with factory() as session:
            if unsubscribe(session, subscriber_id, source="one-click" if "List-Unsubscribe" in request.form else "page") is None:
                return _page(*UNKNOWN)
        return _page("Unsubscribed", "You will not receive further issues.")

    @app.route("/preferences/<token>", methods=["GET", "POST"])
    def preferences_page(token: str) -> tuple[str, int] | str:
        """Show and change a subscriber's language and topics (signed link from every message)."""
        subscriber_id = _verified(token, "preferences")
        if subscriber_id is None:
            return _page("Link not valid", INVALID_LINK["preferences"], 400)
        with factory() as session:
            subscriber = session.get(Subscriber, subscriber_id)
            if subscriber is None:
                return _page(*UNKNOWN)
            message = ""
            if request.method == "POST":
                try:
                    update_preferences(session, subscriber_id, request.form.get("lang", ""), request.form.get("topics", "").split(","))
                    message = "Saved."
                except ValueError as exc:
                    return render_template_string(PREFERENCES, s=subscriber, message=str(exc), languages=LANGUAGES), 400
            return render_template_string(PREFERENCES, s=subscriber, message=message, languages=LANGUAGES)

    return app
