"""Compression passes applied to a model, step by step, as a recipe says."""
