"""Entity kinds beyond experiments and runs, one module each.

Each module registers its tables (``rows.register_tables``), its row builder
(``rows.register_builder``) and its walker hook (``walk.EXPERIMENT_WALKERS``,
``walk.STORE_WALKERS`` or ``walk.RUN_READERS``). Importing this package registers them all.
"""

# Order matters: parents' tables before children's (datasets and logged models reference runs).
# isort: off
from . import datasets, logged_models, traces, registry  # noqa: E402,F401
# isort: on
