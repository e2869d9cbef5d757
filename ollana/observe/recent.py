"""The last requests a listener answered, for the status page: a bounded ring.

Only what the request line and the outcome say (time, method, path, model, server, status,
duration): never a body, a query string or a header, so no prompt or answer can end up here.
Entries are stored as they come (a tuple append on the request path) and shaped only when the
page asks.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from ollana.observe.labels import display_name

SIZE: Final = 100
# Longer paths and names are cut: the page shows a line per request, not a document.
MAX_TEXT: Final = 120

# (wall clock s, method, path, model key, server, status (0: aborted), seconds)
Entry = tuple[float, str, str, str, str, int, float]


def clipped(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


class RecentRequests:
    def __init__(self, size: int = SIZE) -> None:
        self._ring: deque[Entry] = deque(maxlen=size)
        self.add = self._ring.append  # called per request: the deque's own method, no wrapper

    def __len__(self) -> int:
        return len(self._ring)

    def document(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [
            {"at": round(at, 3), "method": clipped(method), "path": clipped(path),
             "model": clipped(display_name(model)), "server": clipped(server), "status": status,
             "ms": round(seconds * 1000, 1)}
            for at, method, path, model, server, status, seconds in reversed(self._ring)
        ]
