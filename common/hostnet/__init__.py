"""OS adapters: TUN devices, addresses, routes (one small interface, DESIGN.md)."""
