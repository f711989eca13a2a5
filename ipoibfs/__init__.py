"""ipoibfs: a userspace IPoIB driver with a FUSE mirror of its sysfs."""

__version__ = "0.1.0"
