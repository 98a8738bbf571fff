"""Diffusion models the server can run.

:mod:`stepwatch.server.models.builtin` is the small shapes model that ships with the package, so
the service works offline on a fresh machine.
"""
