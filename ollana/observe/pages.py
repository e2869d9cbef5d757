"""ollana's own pages on a listener: ``/ollana/`` (the status page and its assets),
``/ollana/v1/dashboard`` (what the page shows, as JSON) and ``/ollana/v1/metrics`` (Prometheus).

They are ordinary own endpoints of the proxy handler, so they sit behind what the listener
already enforces: the loopback Host check on the client listener, the gate on a server in trust
mode devices. The page is one static HTML/JS/CSS set shipped in the package (``ollana.statuspage``),
under a Content-Security-Policy that allows only this origin's script and style: no inline script,
nothing from elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ollana.observe import dashboard
from ollana.observe.metrics import Metrics
from ollana.trust.devices import DeviceTrust

PAGE_PATH: Final = "/ollana"  # (the handler looks paths up without their trailing slash)
METRICS_PATH: Final = "/ollana/v1/metrics"
STATIC: Final = "/ollana/static/"
_ASSETS: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON: Final = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

Status = Callable[[], dict[str, Any]]
Page = Callable[[], web.Response]


def _read_assets() -> dict[str, bytes]:
    folder = resources.files("ollana.statuspage")
    return {name: folder.joinpath(name).read_bytes() for name in _ASSETS}


def _asset(name: str, body: bytes) -> Page:
    headers = {**_COMMON, "Content-Type": _ASSETS[name], "Cache-Control": "no-cache", "Content-Security-Policy": CSP}
    return lambda: web.Response(body=body, headers=headers)


def status_pages(
    metrics: Metrics, role: str, status: Status, servers: Callable[[dict[str, Any]], list[dict[str, Any]]],
    devices: DeviceTrust | None,
) -> dict[str, Page]:
    """The own endpoints a listener of ``role`` adds; its status is read at every scrape too.

    ``servers`` turns the role's status document into the page's server rows; ``devices``: the
    node's trust store, whose pending devices the page lists (None: trust mode open).
    """
    metrics.track(role, status)

    def dashboard_json() -> web.Response:
        doc = status()
        body = dashboard.document(doc, servers(doc), metrics.recent(role),
                                  dashboard.pending_entries(devices.store.pending() if devices else ()), metrics.wall_clock())
        return web.Response(body=json.dumps(body).encode(), headers={
            **_COMMON, "Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store",
        })

    def exposition() -> web.Response:
        return web.Response(body=metrics.exposition(), headers={
            **_COMMON, "Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store",
        })

    assets = _read_assets()
    pages: dict[str, Page] = {PAGE_PATH: _asset("index.html", assets["index.html"])}
    pages.update({STATIC + name: _asset(name, body) for name, body in assets.items() if name != "index.html"})
    pages[dashboard.DASHBOARD_PATH] = dashboard_json
    pages[METRICS_PATH] = exposition
    return pages

