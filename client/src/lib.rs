//! Sealpost client library.
