"""FastDeploy's scheduler parameters on `nexussched router`: names, both flag spellings, and
one-line errors at start for invalid values or an unreachable Redis."""

from __future__ import annotations

import argparse

import pytest
from fastdeploy_harness import free_port

from nexussched.cli import main
from nexussched.router.modes import SchedulerParams, add_scheduler_args, params_from_args


def _parse(*argv: str) -> SchedulerParams | None:
    p = argparse.ArgumentParser()
    add_scheduler_args(p)
    return params_from_args(p.parse_args(list(argv)))


def test_defaults_are_fastdeploys():
    d = SchedulerParams()
    assert (d.name, d.max_size, d.ttl, d.host, d.port, d.db, d.password, d.topic) == (
        "local",
        -1,
        900,
        "127.0.0.1",
        6379,
        0,
        "",
        "default",
    )
    assert (d.min_load_score, d.load_shards_num, d.sync_period, d.expire_period) == (3, 1, 5, 3000)
    assert d.release_load_expire_period == 600
    assert (d.reader_parallel, d.writer_parallel, d.reader_batch_size, d.writer_batch_size) == (
        4,
        4,
        200,
        200,
    )


def test_both_spellings_and_unset():
    assert _parse() is None
    a = _parse(
        "--scheduler-name",
        "global",
        "--scheduler-min-load-score",
        "5",
        "--scheduler-load-shards-num",
        "3",
    )
    b = _parse(
        "--scheduler-name",
        "global",
        "--scheduler-min-load_score",
        "5",
        "--scheduler-load_shards_num",
        "3",
    )
    assert a == b and a.min_load_score == 5 and a.load_shards_num == 3
    c = _parse(
        "--scheduler-name",
        "splitwise",
        "--scheduler-release-load-expire-period",
        "60",
        "--scheduler-reader-parallel",
        "2",
    )
    assert c.release_load_expire_period == 60 and c.reader_parallel == 2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--scheduler-name", "fancy"], "unknown scheduler 'fancy'"),
        (["--scheduler-name", "local", "--scheduler-ttl", "-5"], "--scheduler-ttl"),
        (["--scheduler-name", "local", "--scheduler-max-size", "0"], "--scheduler-max-size"),
        (["--scheduler-name", "global", "--scheduler-min-load-score", "0"], "min-load-score"),
        (["--scheduler-name", "global", "--scheduler-load-shards-num", "0"], "load-shards-num"),
        (["--scheduler-name", "global", "--scheduler-topic", "a:b"], "--scheduler-topic"),
        (["--scheduler-ttl", "5"], "need --scheduler-name"),
    ],
)
def test_invalid_values_fail_at_start_with_one_line(capsys, argv, needle):
    rc = main(["router", "--backend", "http://127.0.0.1:9", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1


def test_unreachable_redis_fails_at_start_with_one_line(capsys):
    port = free_port()
    rc = main(
        [
            "router",
            "--backend",
            "http://127.0.0.1:9",
            "--scheduler-name",
            "global",
            "--scheduler-port",
            str(port),
            "--port",
            str(free_port()),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"redis://127.0.0.1:{port}/0 unavailable" in err
