"""Say what is wrong, once; help that explains itself: the router's start-up and outage messages,
one-line errors for bad flag values, help text, defaults and --version."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from nexussched.cli import build_parser, main
from nexussched.localproc import free_ports
from nexussched.router.outage import OutageLog
from nexussched.router.policies import POLICIES


def _actions(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _actions(sp, (*path, name))
        elif not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            yield path, a, p


def test_every_flag_has_help_and_its_default_is_shown():
    for path, a, parser in _actions(build_parser()):
        where = f"{' '.join(path)} {a.option_strings or a.dest}"
        assert a.help and a.help.strip(), f"no help: {where}"
        if a.option_strings and a.default not in (None, False, [], argparse.SUPPRESS):
            shown = parser._get_formatter()._expand_help(a)  # the text --help prints
            assert "default" in shown, f"default not shown: {where}"


def test_help_names_choices_and_has_no_percent_glitches():
    p = build_parser()
    texts = [p.format_help()]
    texts += [sp.format_help() for _, a, sp in _actions(p)]
    for t in texts:
        assert "%%" not in t
    router_help = next(sp for path, _, sp in _actions(p) if path == ("router",)).format_help()
    for name in POLICIES:
        assert name in router_help
    assert "nexussched.router" not in router_help  # choices by name, not by Python dict


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("nexussched ")


@pytest.mark.parametrize(
    "argv",
    [
        ["router", "--mode", "prism", "--policy", "prism", "--mode-arg", "bogus=1",
         "--backend", "http://127.0.0.1:9"],
        ["router", "--mode-arg", "noequals", "--backend", "http://127.0.0.1:9"],
        ["router", "--policy", "least_load", "--policy-arg", "x=1", "--backend",
         "http://127.0.0.1:9"],
        ["router", "--policy", "nope"],
        ["router", "--scrape-timeout", "0", "--backend", "http://127.0.0.1:9"],
        ["engine-sim", "--profile", "tpu"],
        ["eval", "--rate-scale", "fast"],
        ["eval", "--policies", "fastest"],
        ["eval", "--head", "ten"],
        ["trace", "info", "bundled", "--head", "0"],
        ["perf", "fit", "--telemetry", "/nonexistent.jsonl", "--out", "m.json"],
    ],
)  # fmt: skip
def test_bad_flag_values_are_one_line_errors(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own checks (types, choices)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "error" in err


def test_scrape_timeout_reaches_the_router_settings():
    from nexussched.router.cli_router import settings_from_args

    def parsed(*extra: str) -> float:
        args = build_parser().parse_args(["router", "--backend", "http://127.0.0.1:9", *extra])
        return settings_from_args(args).scrape_timeout

    assert parsed() == 2.0
    assert parsed("--scrape-timeout", "10") == 10.0


def test_prism_mode_with_redis_down_fails_fast_in_one_line():
    (dead,) = free_ports(1)  # nothing listens there
    r = subprocess.run(
        [sys.executable, "-m", "nexussched.cli", "router", "--mode", "prism", "--policy", "prism",
         "--mode-arg", f"redis=redis://127.0.0.1:{dead}", "--backend", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "Redis" in line and str(dead) in line


def test_outage_is_logged_when_it_starts_once_per_interval_and_when_it_ends(caplog):
    now = [0.0]
    o = OutageLog("plane", logging.getLogger("t.outage"), every=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.outage"):
        for _ in range(650):  # 65 s of failures every 0.1 s
            o.fail(ConnectionError("refused"))
            now[0] += 0.1
        o.ok()
        o.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # start, after 30 s, after 60 s, recovery
    assert "refused" in lines[0] and "still failing" in lines[1] and "recovered" in lines[-1]


def test_router_logs_an_unreachable_backend_once_and_models_answers_503(spawn):
    dead, rport = free_ports(2)
    router = spawn("router", "--backend", f"http://127.0.0.1:{dead}", "--health-interval", "0.05",
                   "--log-level", "warning", port=rport)  # fmt: skip
    try:
        urllib.request.urlopen(router.url + "/v1/models", timeout=5)
        raise AssertionError("expected 503")
    except urllib.error.HTTPError as e:
        assert e.code == 503
        body = json.loads(e.read())
    assert body["error"]["code"] == "no_healthy_backend" and "message" in body["error"]
    # about 20 more probes fail in the next second; the start-up line is all that is logged
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
    log = router.log_tail(20000)
    assert log.count("unreachable at start") == 1, log
    assert len([x for x in log.splitlines() if str(dead) in x]) == 1, log
