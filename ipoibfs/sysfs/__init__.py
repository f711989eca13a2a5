"""The FUSE mirror: a declarative tree of the driver's sysfs/debugfs files (a view, no state)."""

from .fs import FUSE_OPTIONS, SysfsOperations
from .tree import Mirror

__all__ = ["FUSE_OPTIONS", "Mirror", "SysfsOperations"]
