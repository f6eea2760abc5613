"""Byte-level helpers: IP header parsing and validation."""
