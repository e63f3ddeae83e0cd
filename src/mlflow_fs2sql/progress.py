"""The progress protocol the library reports to; the CLI injects a Rich bar (``report.py``)."""

from __future__ import annotations

from typing import Optional


class Progress:
    """Null progress: callers never branch on "quiet"."""

    def start(self, description: str, total: Optional[int], unit: str = "") -> None:
        """A new phase of ``total`` steps (None: steps are not counted; ``unit="bytes"``: a
        byte count, shown as sizes)."""

    def advance(self, n: int = 1) -> None:
        pass

    def stop(self) -> None:
        pass


NULL_PROGRESS = Progress()
