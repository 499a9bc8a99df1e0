"""The report's job runner: dependent searches over a process pool, memoised, no barriers."""

from __future__ import annotations

import pytest

from nexussched.eval.jobs import JobRunner, Spawn, Urgent


def _square(task: tuple) -> tuple[int, float]:
    return task[0] * task[0], 0.0


def _bisect_job(target: int, lo: int, hi: int):
    """Find the smallest x in [lo, hi] with x*x >= target, one evaluation per step."""
    steps = 0
    while lo < hi:
        mid = (lo + hi) // 2
        (sq,) = yield [(mid,)]
        steps += 1
        lo, hi = (lo, mid) if sq >= target else (mid + 1, hi)
    return lo, steps


def _parent_job():
    first = yield [(2,), (3,), (2,)]  # a repeated task is run once and answered twice
    kids = yield Spawn([_bisect_job(50, 0, 20), _bisect_job(10, 0, 20)])
    return first, kids


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_get_results_in_order_and_identical_tasks_run_once(workers):
    runner = JobRunner(_square, workers=workers, cost=lambda t: t[0])
    (out,) = runner.run([_parent_job()])
    first, kids = out
    assert first == [4, 9, 4]
    assert [k[0] for k in kids] == [8, 4]  # ceil(sqrt(50)), ceil(sqrt(10))
    asked = 2 + sum(steps for _, steps in kids)
    assert runner.runs < asked + 1  # memoised: (2,) once, and shared bisection points once
    assert runner.runs == len(runner.cache)


def test_urgent_tasks_start_before_costlier_ordinary_ones():
    order: list[int] = []

    def job(urgent: bool, x: int):
        (v,) = yield (Urgent([(x,)]) if urgent else [(x,)])
        order.append(x)
        return v

    JobRunner(_square, workers=1, cost=lambda t: t[0]).run(
        [job(False, 9), job(True, 1), job(False, 5)]
    )
    assert order == [1, 9, 5]  # the urgent one first, then costliest first


def test_an_empty_task_list_and_no_children_do_not_stall():
    def job():
        a = yield []
        b = yield Spawn([])
        return a, b

    assert JobRunner(_square, workers=1).run([job(), job()]) == [([], []), ([], [])]
