"""The host kernel's MAD layer (ib_mad and ib_umad): /dev/infiniband/umadN and issmN of the
host's HCA ports, served by a devfs mount beside the mirror (service.py) and bound by
`ipoibfs exec` at /dev/infiniband. layer.py is the umad files and their agents; the
answers of the port's own SMA and PMA come from fabric/sma.py."""

from .layer import IssmFile, UmadFile, UmadHandle, UmadPort
from .service import UmadService, dev_dir

__all__ = ["IssmFile", "UmadFile", "UmadHandle", "UmadPort", "UmadService", "dev_dir"]
