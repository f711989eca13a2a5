"""The MAD layer: InfiniBand management datagrams as the kernel's umad ABI, the SMA, the SA,
the PMA and RMPP see them (sans-IO: pure functions, frozen value types and state machines
that take events and return MADs).

- layout: bit-exact field tables (IBA offsets, as libibmad's fields.c lists them);
- umad: the umad ABI (struct ib_user_mad_hdr, the registration requests, the ioctls);
- common: the common MAD header, classes, methods, status codes, the response builder
  and ClassPortInfo;
- smp: LID-routed and directed-route SMPs, smi.c's DR rules, the SMA's attributes;
- sa: the SA MAD, its records, component-mask matching and the SA's answers;
- rmpp: the RMPP header, segmenting, reassembly and ACKs;
- pma: PortCounters and PortCountersExtended, their select masks.

Import from the submodules (`from ipoibfs.wire.mad import smp`).
"""
