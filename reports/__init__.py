"""Reports: results schema, HTML/JSON/CSV rendering and run comparison. Imports no ML framework."""
