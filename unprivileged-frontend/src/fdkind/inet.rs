//! Open file descriptions of TCP and UDP sockets over IPv4 and IPv6 (see tcp(7), udp(7), ip(7), ipv6(7)).
