"""Diffusion models the server can run.

:mod:`.loading` turns the operator's model configuration (``NAME=SOURCE[,option=value...]``) into
:class:`~stepwatch.server.engine.model.LoadedModel` objects for the engine;
:mod:`stepwatch.server.models.builtin` is the small shapes model that ships with the package, so
the service works offline on a fresh machine.
"""
