"""How IKE and ESP datagrams reach the gateway: UDP sockets on 500/4500 (`udp`) and the
RFC 9329 TCP encapsulation (`tcp`)."""
