//! Open file descriptions of UNIX domain sockets (see unix(7)).
