"""The unit tier runs without model weights: any unit test that reaches for the packaged MiniLM
weights (or another packaged encoder) fails here (real-encoder tests live in tests/integration, marked ``slow``)."""

from __future__ import annotations

import pytest

from winnow.core.domain.errors import ModelFileError
from winnow.core.ml import encoder


@pytest.fixture(autouse=True)
def no_model_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise ModelFileError("unit tests run without model weights: move this test to tests/integration "
                             "and mark it slow")

    monkeypatch.setattr(encoder, "minilm_files", refuse)
    monkeypatch.setattr(encoder, "package_folder", lambda *args, **kwargs: refuse())
