"""The progress protocol the library reports to; the CLI injects a Rich bar (``report.py``)."""

from __future__ import annotations


class Progress:
    """Null progress: callers never branch on "quiet"."""

    def start(self, description: str, total: int, unit: str = "") -> None:
        """A new bar of ``total`` steps (``unit="bytes"``: a byte count, shown as sizes)."""

    def advance(self, n: int = 1) -> None:
        pass

    def stop(self) -> None:
        pass


NULL_PROGRESS = Progress()
