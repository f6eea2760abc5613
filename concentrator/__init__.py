"""Outpost concentrator: the head-office side terminating many client tunnels."""
