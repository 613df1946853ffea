"""The userspace ESP data plane: the packet loop (`plane`), TUN devices (`tun`) and the
GRO/GSO helpers that batch packets through them (`gro`)."""
