"""Runtime implementations; every module here is imported by targets.registry and registers its runtime."""
