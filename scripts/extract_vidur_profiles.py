"""Regenerate nexussched/data/profiles/*.csv from a checkout of microsoft/vidur.

Vidur (Agrawal et al., MLSys 2024; MIT licence) publishes measured per-operator GPU times of
transformer layers in `data/profiling/compute/<device>/<model>/mlp.csv`. We keep only the numbers
the simulator needs: tensor-parallel degree 1, the median of each operator (ms, one layer), per
profiled token count (the mean of the medians where a count was profiled twice).

    python scripts/extract_vidur_profiles.py --git-dir /path/to/vidur/.git \
        [--commit 7d47513363ec447a741ac5e47241580b47724fbf] [--out nexussched/data/profiles]

`--git-dir` may be a bare repository or a work tree's .git; files are read with `git show`, so no
work tree is needed.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

COMMIT = "7d47513363ec447a741ac5e47241580b47724fbf"
# (output file, path inside the vidur repository)
SOURCES = (
    ("a100_llama3_8b.csv", "data/profiling/compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv"),
    ("a100_llama2_7b.csv", "data/profiling/compute/a100/meta-llama/Llama-2-7b-hf/mlp.csv"),
    ("h100_llama2_7b.csv", "data/profiling/compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv"),
)
OPS = (
    "emb",
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


def read_blob(git_dir: str, commit: str, path: str) -> str:
    out = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{commit}:{path}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or not out.stdout:
        raise SystemExit(f"error: cannot read {path} at {commit}: {out.stderr.strip()}")
    return out.stdout


def extract(text: str) -> list[list[str]]:
    """Median per operator at TP 1; a token count profiled twice gets the mean of its medians."""
    by_tokens: dict[int, list[list[float]]] = {}
    for r in csv.DictReader(io.StringIO(text)):
        if int(r["num_tensor_parallel_workers"]) != 1:
            continue
        vals = [float(r[f"time_stats.{op}.median"]) for op in OPS]
        by_tokens.setdefault(int(r["num_tokens"]), []).append(vals)
    rows = []
    for t in sorted(by_tokens):
        runs = by_tokens[t]
        mean = [sum(col) / len(runs) for col in zip(*runs, strict=True)]
        rows.append([str(t)] + [f"{v:.6g}" for v in mean])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--git-dir", required=True, help="vidur repository (.git or bare)")
    ap.add_argument("--commit", default=COMMIT)
    ap.add_argument("--out", default=str(Path(__file__).parent.parent / "nexussched/data/profiles"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, path in SOURCES:
        rows = extract(read_blob(a.git_dir, a.commit, path))
        with open(out / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["num_tokens", *OPS])
            w.writerows(rows)
        print(f"{out / name}: {len(rows)} token counts from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
