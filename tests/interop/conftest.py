"""Interop tier: our IKEv2 core against real strongSwan, inside lab namespaces.

Reuses the system tier's ``netns_lab`` fixture: each test gets its own
namespaces, torn down whatever happens, after every charon and driver process
started through ``Host.popen`` is stopped.
"""

from __future__ import annotations

from tests.system.conftest import netns_lab

__all__ = ["netns_lab"]
