"""The `nexussched` command. Each sub-command lives in the module that owns its feature and adds
itself through `register(subparsers)`; a handler takes the parsed args and returns an exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules with a `register(subparsers)` function, in help order.
SUBCOMMAND_MODULES = [
    "nexussched.eval.cli_eval",
    "nexussched.perfmodel.cli_perf",
    "nexussched.traces.cli_trace",
    "nexussched.router.cli_router",
    "nexussched.sim.cli_server",
    "nexussched.eval.cli_report",
    "nexussched.eval.cli_tune",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nexussched",
        description="Predictive SLO-aware routing and batch planning for LLM serving clusters.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in SUBCOMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue  # sub-command not built yet
            raise
        m.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # Bad input (trace, config value, model file): one clear line, no traceback.
        print(f"nexussched: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
