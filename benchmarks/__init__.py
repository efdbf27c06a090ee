"""Performance benchmarks and cross-checks of the harness; not unit tests (run separately, see the README)."""
