"""Stand-ins for the model in tests that must not load weights: a deterministic encoder."""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from winnow.core.ml.encoder import Encoder


class CrcEncoder(Encoder):
    """Deterministic pseudo-embeddings ``[n, dim]`` per text (a seeded normal draw per text's CRC)."""

    encoder_id = "crc/test"

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)
