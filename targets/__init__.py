"""Targets: export to a runtime's format, load it and run it on a device."""
