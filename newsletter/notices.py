"""Notices: the one-off messages of a subscription (confirm, welcome, already subscribed, goodbye).

Each is a template folder ``templates/email/<kind>/{subject.txt, body.txt, body.html}`` over the shared
layout, in the subscriber's language (Babel catalogs, `newsletter.i18n`), branded from settings, sent
through the same mailer as deliveries (an SMTP relay, or the outbox in the embedded default). A notice
is not a delivery: no ledger row, a random Message-ID, and no ``List-Unsubscribe`` on a confirmation
request (the address is not on the list yet). Subscription changes queue their notice in the same
transaction and `newsletter.notice_queue` sends it, with retries.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from newsletter import dkim
from newsletter.config import Settings
from newsletter.delivery.errors import DeliveryError, PermanentDeliveryError
from newsletter.delivery.mailers import Mailer, open_mailer
from newsletter.delivery.ratelimit import with_rate_limit
from newsletter.mime import Envelope, HeaderInjection, ascii_address, build_message, parse_from, to_bytes
from newsletter.rendering import environment, inline_css, text_direction, translator

log = logging.getLogger(__name__)

KINDS = ("confirm", "welcome", "already", "goodbye")


def default_mailer(settings: Settings) -> Mailer:
    """The first relay (rate-limited as configured) or the outbox: where one-off messages go."""
    mailer = open_mailer(settings.smtp_urls, settings.outbox_dir, settings.smtp_timeout)
    return with_rate_limit(mailer, settings.smtp_urls[0] if settings.smtp_urls else None, settings.redis_url)


def render_notice(settings: Settings, kind: str, lang: str, **context: Any) -> tuple[str, str, str]:
    """``(subject, text, html)`` of notice ``kind`` in ``lang``; ``context`` fills the template (links, name).

    Raises:
        jinja2.TemplateError, MissingTranslation: a broken template or an untranslated string.
    """
    branding = settings.branding
    values = {
        "lang": lang,
        "dir": text_direction(lang),
        "list_name": branding.list_name(lang),
        "brand": branding,
        "site_url": settings.base_url + "/",
        **context,
    }
    parts = []
    for name in ("subject.txt", "body.txt", "body.html"):
        autoescape = name.endswith(".html")
        template = environment(autoescape, branding.templates).get_template(f"email/{kind}/{name}")
        parts.append(template.render(values, _=translator(lang, autoescape)))
    return " ".join(parts[0].split()), parts[1].strip() + "\n", inline_css(parts[2])


def deliver_notice(
    settings: Settings, kind: str, email: str, name: str, lang: str, *, unsubscribe: str = "", mailer: Mailer | None = None, **context: Any
) -> None:
    """Render notice ``kind`` and hand it to ``mailer`` (default: `default_mailer`, opened and closed here).
    ``unsubscribe`` is the ``List-Unsubscribe`` URL (empty: none).

    Raises:
        TemporaryDeliveryError: a 4xx reply or a lost connection (RFC 5321 §4.2.1): try again later.
        PermanentDeliveryError: a 5xx reply, or an address or header that cannot be sent at all.
        jinja2.TemplateError, MissingTranslation: a broken template or an untranslated string.
    """
    subject, text, html = render_notice(settings, kind, lang, name=name, email=email, unsubscribe_url=unsubscribe, **context)
    envelope = Envelope(
        from_header=settings.from_header(lang),
        to_address=email,
        to_name=name,
        subject=subject,
        message_id=f"<{kind}.{uuid.uuid4().hex}@{settings.mail_domain}>",
        list_id=settings.list_id,
        unsubscribe_url=unsubscribe,
        lang=lang,
    )
    try:
        message = build_message(envelope, text, html)
        recipient = ascii_address(email)
    except (HeaderInjection, ValueError) as exc:  # no relay will ever take it: permanent, not a bug to retry
        raise PermanentDeliveryError(f"cannot build the message: {exc}") from exc
    own = mailer is None
    mailer = mailer or default_mailer(settings)
    try:
        mailer.send(parse_from(settings.from_address).addr_spec, recipient, dkim.signed(to_bytes(message), settings.dkim))
    finally:
        if own:
            mailer.close()


def send_notice(
    settings: Settings, kind: str, email: str, name: str, lang: str, *, unsubscribe: str = "", mailer: Mailer | None = None, **context: Any
) -> bool:
    """`deliver_notice` once, without the queue: True when the relay (or outbox) took it; a refused or
    failed send is logged and returns False. Subscription messages go through `newsletter.notice_queue`,
    which retries; this is for callers that report the outcome to a person at once."""
    try:
        deliver_notice(settings, kind, email, name, lang, unsubscribe=unsubscribe, mailer=mailer, **context)
        return True
    except DeliveryError as exc:
        log.warning("%s notice not sent: %s", kind, exc)
        return False
