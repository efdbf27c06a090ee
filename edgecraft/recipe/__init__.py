"""The recipe, in three parts: its types (``schema``: models, data, passes, variants, targets, settings), the
YAML loader that remembers each field's line (``yaml_loader``, with ``load.load_recipe`` on top), and the parts
only Python code can give (``in_memory``: a module, arrays, a torch Dataset)."""
