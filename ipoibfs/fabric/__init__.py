"""The InfiniBand side at the level of verbs: an HCA with ports, and a subnet manager.

`FabricPort` is what the IPoIB driver talks to; a `Fabric` backend opens one per HCA port.
The embedded fabric (one host, its own subnet manager in-process) and the shared one
(`client.RemoteFabric`, the client of `fabric serve`) implement it; real hardware later.
"""
