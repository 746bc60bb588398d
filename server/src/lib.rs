//! Sealpost relay library.
