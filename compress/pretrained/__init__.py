"""Pretrained built-in models whose weights ship in registry packages."""
