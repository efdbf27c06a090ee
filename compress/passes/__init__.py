"""Pass implementations; every module here is imported by compress.registry and registers its passes."""
