//! MMDiT parity (filled by its part).
