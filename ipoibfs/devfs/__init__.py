"""A FUSE server for device-like files (the umad surface under `exec`), speaking the kernel's
FUSE protocol directly: pyfuse3 has no ioctl handler, and restricted ioctls and poll are all
the umad ABI needs (see README, "The /dev/infiniband server")."""

from ipoibfs.devfs.server import (
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLOUT,
    DevFs,
    DeviceFile,
    DeviceHandle,
    Directory,
    Wakeup,
    abort_mount,
    connection_dir,
)

__all__ = [
    "POLLERR",
    "POLLHUP",
    "POLLIN",
    "POLLOUT",
    "DevFs",
    "DeviceFile",
    "DeviceHandle",
    "Directory",
    "Wakeup",
    "abort_mount",
    "connection_dir",
]
