//! Open file descriptions of pipes and FIFOs (see pipe(7)).
