"""The IPoIB driver layer: interface state and the kernel driver's rules, one room per
ib_ipoib file (main, vlan, netlink, multicast, ib, neigh, cm, ethtool, fs), no I/O of its own."""
