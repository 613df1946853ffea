"""The Linux kernel XFRM data plane: netlink messages (netlink), IKE socket options (sockets)
and the DataPlane implementation (backend). See docs/xfrm.md."""
