"""Writers: turn virtual datasets into reference formats (Icechunk, kerchunk)."""
