"""The benchmark harness: one measurement protocol for every runtime."""
