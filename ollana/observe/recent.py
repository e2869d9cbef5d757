"""The last requests a listener answered, for the status page: a bounded ring of values.

Only what the request line and the outcome say (time, method, path, model, server, status,
duration): never a body, a query string or a header, so no prompt or answer can end up here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Final

SIZE: Final = 100
# Longer paths and names are cut: the page shows a line per request, not a document.
MAX_TEXT: Final = 120


@dataclass(frozen=True, slots=True)
class Recent:
    at: float  # wall clock, seconds since the epoch
    method: str
    path: str
    model: str
    server: str
    status: int  # 0: aborted before an answer
    ms: float


def clipped(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


class RecentRequests:
    def __init__(self, size: int = SIZE) -> None:
        self._ring: deque[Recent] = deque(maxlen=size)

    def add(self, entry: Recent) -> None:
        self._ring.append(entry)

    def __len__(self) -> int:
        return len(self._ring)

    def document(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [asdict(entry) for entry in reversed(self._ring)]
