//! One entry point chosen at run time (being built).
