"""Feature vector of a batch: the structural terms of one engine step's cost.

x = [prefill tokens, prefill attention work, decode sequences, sum of decode contexts, 1]
"""

from __future__ import annotations

import numpy as np

from .telemetry import StepRecord, prefill_attn_work

FEATURE_NAMES = ("prefill_tokens", "prefill_attn", "num_decodes", "decode_ctx_sum", "const")
N_FEATURES = len(FEATURE_NAMES)


def batch_features(
    prefill_chunks: tuple[tuple[int, int], ...] | list[tuple[int, int]],
    num_decodes: int,
    decode_ctx_sum: int,
) -> tuple[float, float, float, float, float]:
    tokens = float(sum(c for c, _ in prefill_chunks))
    return (
        tokens,
        prefill_attn_work(prefill_chunks),
        float(num_decodes),
        float(decode_ctx_sum),
        1.0,
    )


def record_features(rec: StepRecord) -> tuple[float, float, float, float, float]:
    if not rec.prefill_chunks:  # a decode-only step (most of them): no sums over no chunks
        return (0.0, 0.0, float(rec.num_decodes), float(rec.decode_ctx_sum), 1.0)
    return batch_features(rec.prefill_chunks, rec.num_decodes, rec.decode_ctx_sum)


def records_matrix(records: list[StepRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Stack records into (X, y) arrays."""
    X = np.array([record_features(r) for r in records], dtype=float).reshape(-1, N_FEATURES)
    y = np.array([r.duration for r in records], dtype=float)
    return X, y
