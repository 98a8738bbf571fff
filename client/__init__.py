"""The stepwatch client: an async Python library and the ``stepwatch`` command line.

It speaks :mod:`stepwatch.protocol` over a WebSocket and never imports the server.
"""
