"""Fixtures for the built-in model's tests: the shipped pipeline and judge, loaded once, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def pipe():  # type: ignore[no-untyped-def]
    from stepwatch.server.models.builtin import load_builtin

    pipeline = load_builtin()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def judge():  # type: ignore[no-untyped-def]
    from stepwatch.server.models.builtin import Judge

    return Judge.load()


@pytest.fixture(scope="session")
def scorer():  # type: ignore[no-untyped-def]
    from stepwatch.server.models.builtin import AdherenceScorer

    return AdherenceScorer.load()
