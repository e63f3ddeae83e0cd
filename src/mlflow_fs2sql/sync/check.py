"""Verification of a database that ``sync`` keeps (see ``verify_source``)."""

from __future__ import annotations


def verify_source(conn, root, source, report) -> None:
    raise NotImplementedError("sync --verify")
