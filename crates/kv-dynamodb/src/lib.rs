//! Not implemented yet: see the README feature matrix.
