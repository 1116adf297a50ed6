"""The one web app (FastAPI, served by uvicorn): editor API, admin pages, reader pages, operations endpoints.

`create_app` builds it; routers live in `api` (editor API, bearer tokens), `admin` (editor pages, sign-in),
`pages` (what subscribers open from a message) and `ops` (health check and Prometheus metrics).
"""

from newsletter.web.app import create_app

__all__ = ["create_app"]
