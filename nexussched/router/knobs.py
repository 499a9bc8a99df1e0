"""Policy knob files: what `nexussched tune` writes and `eval`, `report` and `router` read back
with `--policy-config FILE`, plus `--policy-arg POLICY.KEY=VALUE` overrides.

A knob file is JSON::

    {"policy_args": {"prism": {"slack": 0.4, ...}},        # routing policy -> keyword arguments
     "engine_policy_args": {"lens": {"tpot_margin": 0.1}}}  # engine policy -> its config fields

Other keys (tune's figures) are kept for the reader and ignored here. Every name and value is
checked when the file is read, so a typo is a one-line error, not a run with the defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..engine_sched import ENGINE_POLICIES, LensConfig
from .policies import POLICIES, PrismConfig, make_policy

# Engine policies whose knobs are the fields of a config dataclass passed as `config=`.
ENGINE_KNOB_CONFIGS: dict[str, type] = {"lens": LensConfig}
# Routing policies whose keyword arguments are the fields of a config dataclass (type-checked).
ROUTING_KNOB_CONFIGS: dict[str, type] = {"prism": PrismConfig}


def _check_types(cfg: type, kw: dict, where: str) -> None:
    """A knob whose default is a number (or bool, or str) must be one: dataclasses do not check."""
    defaults = {f.name: f.default for f in fields(cfg)}
    for k, v in kw.items():
        d = defaults.get(k)
        if isinstance(d, bool):
            ok = isinstance(v, bool)
        elif isinstance(d, (int, float)):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif isinstance(d, str):
            ok = isinstance(v, str)
        else:
            continue
        if not ok:
            raise ValueError(f"{where}: {k} must be a {type(d).__name__} like its default "
                             f"{d!r}, got {v!r}")  # fmt: skip


@dataclass
class Knobs:
    """Keyword arguments per routing policy and per engine policy."""

    policy_args: dict[str, dict] = field(default_factory=dict)
    engine_policy_args: dict[str, dict] = field(default_factory=dict)

    def merged(self, other: Knobs) -> Knobs:
        """These knobs with `other`'s on top (key by key)."""
        out = Knobs({k: dict(v) for k, v in self.policy_args.items()},
                    {k: dict(v) for k, v in self.engine_policy_args.items()})  # fmt: skip
        for src, dst in ((other.policy_args, out.policy_args),
                         (other.engine_policy_args, out.engine_policy_args)):  # fmt: skip
            for name, kw in src.items():
                dst.setdefault(name, {}).update(kw)
        return out

    def to_json(self) -> dict:
        return {"policy_args": self.policy_args, "engine_policy_args": self.engine_policy_args}

    def engine_kwargs(self, name: str) -> dict:
        """Keyword arguments for make_engine_policy(name, ...)."""
        kw = self.engine_policy_args.get(name)
        if not kw:
            return {}
        cfg = ENGINE_KNOB_CONFIGS.get(name)
        return {"config": cfg(**kw)} if cfg is not None else dict(kw)

    def check(self, where: str) -> Knobs:
        """Raise ValueError (one line, naming `where`) on an unknown policy, knob or bad value."""
        for name, kw in self.policy_args.items():
            if name not in POLICIES:
                raise ValueError(f"{where}: unknown routing policy {name!r}; known: "
                                 f"{', '.join(POLICIES)}")  # fmt: skip
            _must_be_dict(kw, f"{where}: {name}")
            if name in ROUTING_KNOB_CONFIGS:
                _check_types(ROUTING_KNOB_CONFIGS[name], kw, f"{where}: {name}")
            try:
                make_policy(name, **kw)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: {name}: {_one_line(e)}") from None
        for name, kw in self.engine_policy_args.items():
            if name not in ENGINE_POLICIES:
                raise ValueError(f"{where}: unknown engine policy {name!r}; known: "
                                 f"{', '.join(ENGINE_POLICIES)}")  # fmt: skip
            _must_be_dict(kw, f"{where}: {name}")
            cfg = ENGINE_KNOB_CONFIGS.get(name)
            if cfg is None:
                if kw:
                    raise ValueError(f"{where}: engine policy {name!r} takes no knobs")
                continue
            known = {f.name for f in fields(cfg)}
            bad = sorted(set(kw) - known)
            if bad:
                raise ValueError(f"{where}: {name}: unknown knob(s) {', '.join(bad)}; known: "
                                 f"{', '.join(sorted(known))}")  # fmt: skip
            _check_types(cfg, kw, f"{where}: {name}")
            try:
                cfg(**kw)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: {name}: {_one_line(e)}") from None
        return self


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _must_be_dict(v: object, where: str) -> None:
    if not isinstance(v, dict):
        raise ValueError(f"{where}: expected an object of KEY: VALUE, got {type(v).__name__}")


def load_knobs(path: str | Path) -> Knobs:
    """Read and check a knob file (see the module doc)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"policy config not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict) or not ("policy_args" in data or "engine_policy_args" in data):
        raise ValueError(f"{p}: expected an object with 'policy_args' and/or "
                         "'engine_policy_args' (as `nexussched tune --out` writes)")  # fmt: skip
    pa, ea = data.get("policy_args") or {}, data.get("engine_policy_args") or {}
    _must_be_dict(pa, f"{p}: policy_args")
    _must_be_dict(ea, f"{p}: engine_policy_args")
    return Knobs(pa, ea).check(str(p))


def parse_policy_args(items: list[str] | None, what: str = "--policy-arg") -> Knobs:
    """['prism.slack=0.4', 'lens.tpot_margin=0.1'] -> Knobs (values parsed as JSON when they
    parse, else kept as strings); the policy name says whether it is a routing or engine one."""
    out = Knobs()
    for it in items or []:
        key, sep, raw = it.partition("=")
        pol, dot, knob = key.partition(".")
        if not sep or not dot or not pol or not knob:
            raise ValueError(f"bad {what} {it!r}: expected POLICY.KEY=VALUE, e.g. prism.slack=0.4")
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        if pol in POLICIES:
            out.policy_args.setdefault(pol, {})[knob] = val
        elif pol in ENGINE_POLICIES:
            out.engine_policy_args.setdefault(pol, {})[knob] = val
        else:
            raise ValueError(f"bad {what} {it!r}: {pol!r} is neither a routing policy "
                             f"({', '.join(POLICIES)}) nor an engine policy "
                             f"({', '.join(ENGINE_POLICIES)})")  # fmt: skip
    return out.check(what)
