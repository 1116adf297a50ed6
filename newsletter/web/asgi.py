"""The ASGI entry point for uvicorn (``newsletter.web.asgi:app``): the app for the environment's settings.

A setting that cannot be used stops the server at import with one line and exit status 2, as every
other process does (see `newsletter.config.SettingsError`).
"""

import sys

from newsletter.config import SettingsError, load_settings
from newsletter.web.app import create_app

try:
    app = create_app(load_settings())
except SettingsError as exc:
    for line in str(exc).splitlines():  # several bad settings: one line each (SettingsErrors)
        print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
