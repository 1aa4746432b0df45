//! T5 parity (filled by its part).
