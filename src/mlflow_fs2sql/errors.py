"""fs2sql's own exceptions and its exit codes: the one table the CLI maps them to.

The library raises these and never prints or exits; ``cli.py`` turns them into a paragraph on
stderr and an exit code. Every message says what is wrong, where (the file), and what to do.
"""

from __future__ import annotations

from typing import Optional

# The documented exit codes (README "Exit codes"); ``tests/test_cli.py`` pins them.
EXIT_OK = 0
EXIT_FAILED = 1  # bad input, target exists, I/O error: nothing was written
EXIT_USAGE = 2  # Typer/Click's own usage errors
EXIT_VERIFY_FAILED = 3  # verification found differences
EXIT_SKIPPED = 4  # migrated, but --skip-invalid skipped some entities (listed in the report)
EXIT_LOCKED = 5  # sync: another sync held the database past --lock-timeout; nothing changed
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: nothing was written


class Fs2sqlError(Exception):
    """Base class: a problem the user can act on. ``str()`` is the whole paragraph."""

    exit_code = EXIT_FAILED

    def __init__(self, what: str, *, path: Optional[str] = None, hint: Optional[str] = None):
        self.what = what
        self.path = path
        self.hint = hint
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}: {self.what}")
        else:
            parts.append(self.what)
        if self.hint:
            parts.append(self.hint)
        return " ".join(p.rstrip() for p in parts)


class InvalidSource(Fs2sqlError):
    """One entity of the store cannot be read as MLflow wrote it (strict mode stops here).

    ``kind`` and ``entity_id`` say which entity ``--skip-invalid`` would skip.
    """

    def __init__(
        self,
        what: str,
        *,
        path: str,
        kind: str = "",
        entity_id: str = "",
        hint: Optional[str] = None,
    ):
        self.kind = kind
        self.entity_id = entity_id
        super().__init__(
            what,
            path=path,
            hint=hint
            or "Fix or remove that file, or run again with --skip-invalid to migrate everything "
            "else and list what was skipped.",
        )


class SourceError(Fs2sqlError):
    """The source as a whole is unusable (missing, empty, not an MLflow store)."""


class TargetError(Fs2sqlError):
    """The target cannot be written (exists, not writable, holds MLflow data, bad URI)."""


class TargetBusy(TargetError):
    """Another fs2sql holds the target's lock right now (nothing was written)."""


class SchemaError(Fs2sqlError):
    """The MLflow schema cannot be created or cannot hold what the store contains."""


class VerificationFailed(Fs2sqlError):
    exit_code = EXIT_VERIFY_FAILED


class Interrupted(Fs2sqlError):
    exit_code = EXIT_INTERRUPTED
