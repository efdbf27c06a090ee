"""The ground floor: what every layer shares and nothing else.

The signature and results.json types, the one error the command line prints as a line, atomic file writes, the
one registry implementation, the model-file formats, and what this machine's CPU is. pydantic and numpy at most:
the core imports nothing else of edgecraft (import-linter checks it), so every layer can stand on it.
"""
