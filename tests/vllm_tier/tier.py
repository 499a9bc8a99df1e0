"""The vLLM tier's parts (tests/test_vllm_plugin.py): the vLLM server with the plug-in, and
readers of its telemetry file and /metrics. Imported only where vLLM is installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import REPO_ROOT, free_port

PLUGIN = "nexussched.engine_sched.vllm_plugin.LensAsyncScheduler"
ENGINE = "cpu-tiny-0"
TOPIC = "vllmtier"
MODEL = "tiny"


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


class VllmServer:
    """vLLM's OpenAI server with the plug-in, on a free port. Ready only when its own log says so
    ("Starting vLLM server on", just before it serves) and /health answers: on a machine shared
    with other test runs another server can hold the port for a while (a foreign /health once
    passed for this one 27 s into a start that takes minutes, and every test failed). A start
    that lost its port to another process is retried on a new one."""

    def __init__(self, model_dir: Path, telemetry: Path, redis_port: int, log: Path) -> None:
        self.model_dir = model_dir
        self.telemetry = telemetry
        self.redis_port = redis_port
        self.log = log
        self._logf = open(log, "w")  # noqa: SIM115
        self.starts = 0
        self._spawn()

    def _spawn(self) -> None:
        self.port = free_port()
        self.starts += 1
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO_ROOT),
            VLLM_CPU_KVCACHE_SPACE="1",
            NEXUS_ENGINE_NAME=ENGINE,
            NEXUS_ENGINE_ADDR=f"127.0.0.1:{self.port}",  # how a router maps its stream
            NEXUS_TELEMETRY=str(self.telemetry),
            NEXUS_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            NEXUS_TOPIC=TOPIC,
            NEXUS_PUBLISH_S="0.5",
            # No banking of TPOT slack and no giving up on a decode that fell behind (CPU timing
            # noise makes that happen here): every step is held to 85% of the tightest decode's
            # target, which makes the chunking check below deterministic.
            NEXUS_LENS_CONFIG='{"bank_spend": 0.0, "deprioritize": false}',
        )
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
            str(self.model_dir), "--served-model-name", MODEL, "--host", "127.0.0.1", "--port",
            str(self.port), "--max-model-len", "8192", "--dtype", "float32", "--scheduler-cls",
            PLUGIN,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 900.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                if "Address already in use" in self.tail() and self.starts < 3:
                    self._logf.write(f"\n--- port {self.port} was taken: a new start ---\n")
                    self._logf.flush()
                    self._spawn()
                    continue
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if "Starting vLLM server on" in self.tail(None) and (
                    get(self.url + "/health")[0] == 200
                ):
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(2.0)
        raise RuntimeError(f"vLLM not healthy after {timeout} s:\n{self.tail()}")

    def tail(self, n: int | None = 4000) -> str:
        try:
            text = self.log.read_text()
            return text if n is None else text[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._logf.close()


def read_telemetry(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TelemetryTail:
    """The plug-in's step records appended to its file since this was made, read a batch at a
    time (not the whole file per poll: it holds thousands of records by then). A line still
    being written is kept for the next read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._at = path.stat().st_size  # bytes read, whole lines only

    def new(self) -> list[dict]:
        with open(self.path, "rb") as f:
            f.seek(self._at)
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        self._at += len(whole)
        return [json.loads(line) for line in whole.splitlines() if line.strip()]


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


class Named:
    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url


def served(url: str) -> int:
    """Requests an engine finished (length or stop; not aborted), from its /metrics."""
    text = get(url + "/metrics", timeout=10.0)[1]
    n = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{") and (
            'finished_reason="length"' in line or 'finished_reason="stop"' in line
        ):
            n += float(line.rsplit(" ", 1)[1])
    return int(n)
