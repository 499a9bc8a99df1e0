"""Local helper processes for tests, benchmarks and demos: free ports and a throwaway redis-server.

The redis-server runs on a free loopback port with no persistence in a temporary directory, so it
never touches a server someone else started (such as the one on 6379).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open while choosing, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalRedis:
    """redis-server on a free port; can be killed and restarted on the same port (an empty server
    again, as after a crash without persistence)."""

    def __init__(self, prefix: str = "nxs-redis-") -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class LocalRedisCluster:
    """A throwaway Redis Cluster: `masters` masters with `replicas` replicas each, on free
    loopback ports, data in a temporary directory (on /dev/shm when there is one), built with
    `redis-cli --cluster create`. `kill(port)` crashes a node; its replica takes over after
    `node_timeout_ms` (plus an election). `stop()` kills every node and removes the directory."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        n = masters * (1 + replicas)
        both = free_ports(2 * n)  # client ports, and each node's cluster bus port
        self.ports, self.bus = both[:n], dict(zip(both[:n], both[n:], strict=True))
        base = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.dir = tempfile.mkdtemp(prefix="nxs-rcluster-", dir=base)
        self.node_timeout_ms = node_timeout_ms
        self.procs: dict[int, subprocess.Popen] = {}
        try:
            for p in self.ports:
                self._start(p)
            for p in self.ports:
                self._wait_up(p)
            out = subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *[f"127.0.0.1:{p}" for p in self.ports],
                    "--cluster-replicas",
                    str(replicas),
                    "--cluster-yes",
                ],  # fmt: skip
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-500:]}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    @property
    def seeds(self) -> str:
        """The --scheduler-host form: every node as host:port, comma-separated."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _start(self, port: int) -> None:
        d = Path(self.dir) / str(port)
        d.mkdir(exist_ok=True)
        args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
                "yes", "--cluster-port", str(self.bus[port]), "--cluster-config-file", "nodes.conf", "--cluster-node-timeout",
                str(self.node_timeout_ms), "--save", "", "--appendonly", "no", "--dir", str(d),
                "--protected-mode", "no", "--logfile", str(d / "redis.log"),
                # a replica always tries to take over (its data age would rule it out here)
                "--cluster-replica-validity-factor", "0"]  # fmt: skip
        self.procs[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_up(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {port}")

    def cli(self, port: int, *args: str) -> str:
        out = subprocess.run(
            [REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return out.stdout

    def live_ports(self) -> list[int]:
        return [p for p, pr in self.procs.items() if pr.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports cluster_state:ok (all slots served)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in self.cli(p, "cluster", "info") for p in self.live_ports()):
                return
            time.sleep(0.1)
        raise RuntimeError("Redis Cluster did not reach cluster_state:ok")

    def master_of(self, key: str) -> int:
        """Port of the master serving `key`'s slot (as a live node sees it)."""
        port = self.live_ports()[0]
        slot = int(self.cli(port, "cluster", "keyslot", key).strip())
        for line in self.cli(port, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) < 9 or "master" not in parts[2] or "fail" in parts[2]:
                continue
            for rng in parts[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def wait_failover(self, key: str, old: int, timeout: float = 30.0) -> int:
        """Until a master other than `old` serves `key`'s slot and the cluster is ok again;
        returns that master's port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.master_of(key)
            except RuntimeError:
                port = old
            if port != old:
                self.wait_ok(max(1.0, deadline - time.monotonic()))
                return port
            time.sleep(0.1)
        raise RuntimeError(f"no replica took over from the master on port {old}")

    def kill(self, port: int) -> None:
        pr = self.procs.get(port)
        if pr is not None and pr.poll() is None:
            pr.kill()
            pr.wait()

    def stop(self) -> None:
        for pr in self.procs.values():
            if pr.poll() is None:
                pr.kill()
        for pr in self.procs.values():
            pr.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
