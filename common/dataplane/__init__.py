"""Data plane: worker loops moving packets TUN <-> ESP <-> UDP, and their control API."""
