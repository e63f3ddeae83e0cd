"""MySQL/MariaDB (work in progress)."""
from ..errors import TargetError
from .base import Target


class MysqlTarget(Target):
    def __init__(self, target, **kw):
        raise TargetError("MySQL/MariaDB targets are not implemented yet.")
