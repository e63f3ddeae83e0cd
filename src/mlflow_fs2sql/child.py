"""How fs2sql starts a Python child process of its own (the schema builder, the prefetcher)."""
from __future__ import annotations

import sys
from typing import List

# ``python -m`` and ``python -c`` put the working folder first on sys.path, so a user's
# ``queue.py``, ``json.py`` or a clone of MLflow (a folder ``mlflow``) where fs2sql runs would be
# imported, and run, in place of the real module. The child drops that entry before importing
# anything; it keeps the working folder itself (the walk may send it relative paths).
_RUN = ("import sys\n"
        "if sys.path and sys.path[0] == '':\n"
        "    del sys.path[0]\n"
        "import runpy\n"
        "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")


def module_command(module: str, *args: str) -> List[str]:
    """The command that runs ``module`` as ``__main__`` in this interpreter, with ``args``."""
    return [sys.executable, "-c", _RUN.format(module=module), *args]
