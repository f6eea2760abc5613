"""Outpost client: the laptop side (controller, TUI, headless CLI)."""
