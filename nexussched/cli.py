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


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default (unless it already says it); choices by name."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower():
            return text
        d = action.default
        if (
            d is None
            or d is False
            or d == []
            or d is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _all_parsers(p: argparse.ArgumentParser):
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in dict.fromkeys(a.choices.values()):
                yield from _all_parsers(sp)


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as _v

        return _v("nexussched")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nexussched",
        description="Predictive SLO-aware routing and batch planning for LLM serving clusters.",
    )
    p.add_argument("--version", action="version", version=f"nexussched {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in SUBCOMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue  # sub-command not built yet
            raise
        m.register(sub)
    for q in _all_parsers(p):
        q.formatter_class = HelpFormatter
        q.error = _one_line_error(q)  # type: ignore[method-assign]
    return p


def _one_line_error(parser: argparse.ArgumentParser):
    """argparse's errors as one line (no usage block): `nexussched eval: error: ...`."""

    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    return error


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
