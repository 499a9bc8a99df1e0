"""The README's knob table says what the code does: names, defaults and tune's search ranges."""

from __future__ import annotations

import re
from pathlib import Path

from nexussched.engine_sched import LensConfig
from nexussched.eval.tune import LENS_SPACE, PRISM_CHOICES, PRISM_SPACE
from nexussched.router.policies import PrismConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def _knob_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| `(prism|lens)\.(\w+)` \| ([^|]+) \| ([^|]+) \|", line)
        if m:
            rows[f"{m[1]}.{m[2]}"] = (m[3].strip(), m[4].strip())
    return rows


def _num(text: str) -> str:
    return f"{float(text):g}"


def test_readme_knob_table_matches_the_configs_and_the_tune_space():
    rows = _knob_rows()
    searched = {f"prism.{k}" for k in (*PRISM_SPACE, *PRISM_CHOICES)}
    searched |= {f"lens.{k}" for k in LENS_SPACE}
    assert set(rows) == searched
    for key, (default, space) in rows.items():
        pol, name = key.split(".")
        cfg = PrismConfig() if pol == "prism" else LensConfig()
        real = getattr(cfg, name)
        if isinstance(real, bool):
            assert default == str(real), key
        else:
            assert (default if isinstance(real, str) else _num(default)) == (
                real if isinstance(real, str) else f"{real:g}"
            ), key
        if pol == "prism" and name in PRISM_CHOICES:
            assert [v.strip() for v in space.split(",")] == [str(c) for c in PRISM_CHOICES[name]]
            continue
        lo, hi, log = (PRISM_SPACE if pol == "prism" else LENS_SPACE)[name]
        m = re.match(r"([\d.]+) - ([\d.]+)( \(log\))?$", space)
        assert m, space
        assert (_num(m[1]), _num(m[2]), bool(m[3])) == (f"{lo:g}", f"{hi:g}", log), key
