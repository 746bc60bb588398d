//! Sealpost protocol core.
