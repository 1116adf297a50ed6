"""The ASGI entry point for uvicorn (``newsletter.web.asgi:app``): the app for the environment's settings."""

from newsletter.config import load_settings
from newsletter.web.app import create_app

app = create_app(load_settings())
