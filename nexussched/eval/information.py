"""What the simulated policies may know: the view (live or oracle), the scrape period, the
telemetry delay, and what clients declare as max_tokens. `nexussched eval` and `report` share
these flags; every run records them."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ..router.policies.view import SCRAPE_PERIOD, TELEMETRY_POLL
from ..sim.request import MAX_TOKENS_DEFAULT, parse_max_tokens
from ..sim.views import VIEWS


@dataclass(frozen=True)
class Information:
    view: str = "live"  # live: what the live router has; oracle: exact, instant engine state
    scrape_period: float = SCRAPE_PERIOD  # s between scrapes of vLLM's gauges (live view)
    telemetry_delay: float = 0.0  # s from a step's end until its record can be polled (live view)
    max_tokens: str = MAX_TOKENS_DEFAULT  # exact | cap:N: what each client declares

    def __post_init__(self) -> None:
        parse_max_tokens(self.max_tokens)
        if self.view not in VIEWS:
            raise ValueError(f"--view must be one of {', '.join(VIEWS)}, got {self.view!r}")
        for name in ("scrape_period", "telemetry_delay"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a number of seconds >= 0, got {v!r}")

    def summary(self) -> dict:
        """The keys every run in results.json carries."""
        return {
            "view": self.view,
            "scrape_period": self.scrape_period if self.view == "live" else 0.0,
            "telemetry_delay": self.telemetry_delay if self.view == "live" else 0.0,
            "max_tokens_mode": self.max_tokens,
        }


def add_max_tokens_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-tokens",
        default=MAX_TOKENS_DEFAULT,
        metavar="exact|cap:N",
        help=f"what clients declare as max_tokens (default {MAX_TOKENS_DEFAULT}): cap:N, every "
        "request asks for N tokens and outputs longer than N are cut there, as vLLM would; exact, "
        "each request declares its true length (an ablation). Policies see only the declaration",
    )


def add_information_args(p: argparse.ArgumentParser) -> None:
    add_max_tokens_arg(p)
    p.add_argument(
        "--view",
        choices=VIEWS,
        default="live",
        help="what routing policies see: live (default: vLLM's scraped gauges, its "
        "cache_config_info, the router's own counts, delayed step telemetry) or oracle (the "
        "engines' exact, instant state: an ablation)",
    )
    p.add_argument(
        "--scrape-period",
        type=float,
        default=SCRAPE_PERIOD,
        help=f"seconds between scrapes of the engines' gauges, live view (default {SCRAPE_PERIOD}: "
        "the live router's own period; 0: before every event)",
    )
    p.add_argument(
        "--telemetry-delay",
        type=float,
        default=0.0,
        help="seconds from a step's end until its record reaches the router's telemetry poll, "
        f"live view (default 0; polls come every {TELEMETRY_POLL}s as in the live router)",
    )


def information_from_args(args: argparse.Namespace) -> Information:
    return Information(args.view, args.scrape_period, args.telemetry_delay, args.max_tokens)
