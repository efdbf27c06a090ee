"""The device agent: a small HTTP server on an edge box that measures model files sent to it with the same
fresh-process harness as a local run, and the client that sends them (``edgecraft agent serve``)."""
