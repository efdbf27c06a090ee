"""The ground floor: what every layer shares and nothing else.

The signature and results.json types, the one error the command line prints as a line, atomic file writes, the
one registry implementation, the model-file formats, and what this machine's CPU is. The standard library and
pydantic only: import-linter refuses any other layer of edgecraft here, and numpy or an ML framework, so every
layer (the board's agent and the reports included) can stand on it.
"""
