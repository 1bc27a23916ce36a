//! Open file descriptions of memfd files (see memfd_create(2)).
