"""FastDeploy's scheduler modes in the live router: local (in-memory per-node queues), global
(work stealing over the Redis plane) and splitwise (prefill/decode disaggregation over the plane).
The composition root (router/compose.py) imports this lazily, through `make_mode_dispatcher`."""

from __future__ import annotations

from .params import SCHEDULER_NAMES, SchedulerParams, add_scheduler_args, params_from_args


def make_mode_dispatcher(
    name: str, settings: object = None, params: SchedulerParams | None = None, **kw: object
):
    """The dispatcher of scheduler mode `name` (params from --scheduler-* flags, or from
    --mode-arg KEY=VALUE pairs named as SchedulerParams fields)."""
    if params is None:
        params = SchedulerParams(name=name, **kw).validate()  # type: ignore[arg-type]
    if name == "local":
        from .local import LocalDispatcher

        return LocalDispatcher(params)
    if name == "global":
        from .global_mode import GlobalDispatcher

        return GlobalDispatcher(params)
    if name == "splitwise":
        from .splitwise import SplitwiseDispatcher

        return SplitwiseDispatcher(params)
    raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULER_NAMES)}")


async def check_plane(params: SchedulerParams, timeout: float = 3.0) -> None:
    """Raise ValueError (one line) when the mode needs Redis and Redis does not answer."""
    if params.name == "local":
        return
    from ...plane import PlaneUnavailable, connect

    try:
        client = await connect(params.redis, timeout)
    except PlaneUnavailable as e:
        raise ValueError(str(e)) from None
    await client.aclose()


__all__ = [
    "SCHEDULER_NAMES",
    "SchedulerParams",
    "add_scheduler_args",
    "check_plane",
    "make_mode_dispatcher",
    "params_from_args",
]
