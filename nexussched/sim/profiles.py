"""Measured operator profiles (Vidur, MIT) read as a staircase of the batch's token count.

Each CSV in `nexussched/data/profiles/` holds, per profiled token count, the median GPU time (ms) of
one layer's non-attention operators (projections, MLP, norms, rope, residual adds) and of the
embedding lookup. A batch of T tokens costs what the smallest profiled count >= T costs: GEMM
kernels pad M to their tiles, so time moves in steps, and reading the table as a staircase keeps
those steps instead of smoothing them away. See the README in that folder for source and licence.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)


@dataclass(frozen=True)
class LayerShape:
    """What an operator's cost scales with, for converting a profile between models."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    def op_size(self, op: str) -> float:
        if op == "attn_pre_proj":  # fused QKV projection
            return self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        if op == "attn_rope":
            return (self.heads + self.kv_heads) * self.head_dim
        if op in ("mlp_up_proj", "mlp_down_proj", "mlp_act"):
            return self.hidden * self.intermediate
        return self.hidden * self.hidden  # out projection; norms and adds scale with hidden alike


LLAMA2_7B = LayerShape(hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008)
LLAMA3_8B = LayerShape(hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336)


@dataclass(frozen=True)
class OperatorProfile:
    """Per-layer operator times (ms) at profiled token counts, plus the embedding."""

    tokens: tuple[int, ...]
    ops: tuple[tuple[float, ...], ...]  # ops[i][j]: operator OPS[j] at tokens[i]
    emb: tuple[float, ...]

    def layer_ms(self) -> list[float]:
        """One layer's time at each profiled count. A layer has two residual adds."""
        add = OPS.index("add")
        return [sum(row) + row[add] for row in self.ops]

    def converted(self, src: LayerShape, dst: LayerShape) -> OperatorProfile:
        """Scale each operator by its weight (or element) ratio between two model shapes."""
        r = [dst.op_size(op) / src.op_size(op) for op in OPS]
        ops = tuple(tuple(v * k for v, k in zip(row, r, strict=True)) for row in self.ops)
        return OperatorProfile(self.tokens, ops, self.emb)


@functools.cache
def load_profile(name: str) -> OperatorProfile:
    """Read `nexussched/data/profiles/<name>.csv`; a bad file raises ValueError naming it."""
    try:
        text = (resources.files("nexussched") / "data" / "profiles" / f"{name}.csv").read_text()
    except FileNotFoundError:
        raise ValueError(f"no measured profile {name!r} in nexussched/data/profiles") from None
    tokens: list[int] = []
    ops: list[tuple[float, ...]] = []
    emb: list[float] = []
    for lineno, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
        try:
            tokens.append(int(row["num_tokens"]))
            ops.append(tuple(float(row[op]) for op in OPS))
            emb.append(float(row["emb"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad profile profiles/{name}.csv, line {lineno}: {e}") from None
    if not tokens or tokens != sorted(set(tokens)):
        raise ValueError(f"bad profile profiles/{name}.csv: token counts must increase")
    return OperatorProfile(tuple(tokens), tuple(ops), tuple(emb))


def staircase(tokens: tuple[int, ...], values: list[float], upto: int) -> list[float]:
    """Dense table t[T] for T in 0..upto: the value at the smallest profiled count >= T.

    Made non-decreasing from the right (a batch never costs less than a smaller one: the engine
    could have run it padded), and extended proportionally past the last profiled count, where
    every operator is compute-bound and linear in tokens.
    """
    vals = list(values)
    for i in range(len(vals) - 2, -1, -1):
        vals[i] = min(vals[i], vals[i + 1])
    out = [0.0] * (upto + 1)
    j = 0
    last_t, last_v = tokens[-1], vals[-1]
    for t in range(1, upto + 1):
        if t > last_t:
            out[t] = last_v * t / last_t
            continue
        while tokens[j] < t:
            j += 1
        out[t] = vals[j]
    return out
