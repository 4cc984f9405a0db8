"""Real Qdrant servers on loopback for the tests and the benchmarks: one node, or a cluster of
peers in distributed mode (the binary from ../shared/bin, or a `qdrant` on PATH; see
devtools/binaries.py). Each peer has its own storage folder and free ports; a peer can be
SIGKILLed and started again on the same ports and storage, as a machine that crashed and came back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from devtools.binaries import binary
from devtools.ports import free_port
from devtools.processes import stop, wait_http

READY_S = 60.0


def qdrant_binary() -> Path | None:
    """The Qdrant server binary, or None where neither ../shared/bin/qdrant.xz nor PATH has one."""
    return binary("qdrant")


class Peer:
    """One Qdrant server process: HTTP, gRPC and (in a cluster) peer-to-peer ports on 127.0.0.1."""

    def __init__(self, exe: Path, folder: Path, cluster: bool) -> None:
        self.exe = exe
        self.folder = folder
        self.cluster = cluster
        self.http_port, self.grpc_port, self.p2p_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def p2p_url(self) -> str:
        return f"http://127.0.0.1:{self.p2p_port}"

    def start(self, bootstrap: Peer | None = None) -> None:
        """Start the process (again: same ports, same storage, so it rejoins as the same peer)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "QDRANT__SERVICE__HOST": "127.0.0.1",
            "QDRANT__SERVICE__HTTP_PORT": str(self.http_port),
            "QDRANT__SERVICE__GRPC_PORT": str(self.grpc_port),
            "QDRANT__STORAGE__STORAGE_PATH": str(self.folder / "storage"),
            "QDRANT__STORAGE__SNAPSHOTS_PATH": str(self.folder / "snapshots"),
            "QDRANT__TELEMETRY_DISABLED": "true",
            "QDRANT__LOG_LEVEL": "WARN",
        }
        args = [str(self.exe)]
        if self.cluster:
            env["QDRANT__CLUSTER__ENABLED"] = "true"
            env["QDRANT__CLUSTER__P2P__PORT"] = str(self.p2p_port)
            restarting = (self.folder / "storage" / "raft_state.json").exists()
            args += ["--uri", self.p2p_url]
            if bootstrap is not None and not restarting:
                args += ["--bootstrap", bootstrap.p2p_url]
        with open(self.folder / "qdrant.log", "ab") as out:
            self.process = subprocess.Popen(args, env=env, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, limit_s: float = READY_S) -> None:
        wait_http(self.process, f"{self.url}/readyz", limit_s, "qdrant", self.log_tail)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        stop(self.process)

    def log_tail(self, limit: int = 3000) -> str:
        path = self.folder / "qdrant.log"
        return path.read_text(errors="replace")[-limit:] if path.exists() else ""


class QdrantCluster:
    """`size` peers (1: a single node, not in distributed mode). The first peer founds the
    cluster, the others join it through the first."""

    def __init__(self, folder: Path, size: int = 1, exe: Path | None = None) -> None:
        found = exe or qdrant_binary()
        if found is None:
            raise FileNotFoundError("no Qdrant server binary: ../shared/bin/qdrant.xz or a `qdrant` on PATH")
        self.peers = [Peer(found, folder / f"peer{i}", cluster=size > 1) for i in range(size)]

    @property
    def url(self) -> str:
        return self.peers[0].url

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.peers]

    def start(self) -> QdrantCluster:
        first, *rest = self.peers
        first.start()
        first.wait_ready()
        for peer in rest:  # one at a time: each joins through consensus before the next
            peer.start(bootstrap=first)
            peer.wait_ready()
        if rest:
            self.wait_peers(len(self.peers))
        return self

    def wait_peers(self, count: int, limit_s: float = READY_S, via: Sequence[Peer] = ()) -> None:
        """Until the cluster (as `via`'s first live peer sees it) counts `count` peers."""
        deadline = time.monotonic() + limit_s
        ask = [p for p in (via or self.peers) if p.process is not None and p.process.poll() is None]
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"{ask[0].url}/cluster", timeout=2.0).json()["result"]
                if len(status.get("peers", {})) >= count:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the Qdrant cluster did not reach {count} peers within {limit_s} s")

    def restart(self, index: int) -> None:
        """Start peer `index` again after a kill; it rejoins with its storage."""
        peer = self.peers[index]
        peer.start(bootstrap=self.peers[0] if index else None)
        peer.wait_ready()

    def replicas_active(self, collection: str) -> bool:
        """Every shard replica of `collection` is Active (a restarted peer has caught up)."""
        for peer in self.peers:
            if peer.process is None or peer.process.poll() is not None:
                return False
            info = httpx.get(f"{peer.url}/collections/{collection}/cluster", timeout=2.0).json()["result"]
            states = [s["state"] for s in info.get("local_shards", [])] + [
                s["state"] for s in info.get("remote_shards", [])
            ]
            if not states or any(state != "Active" for state in states):
                return False
        return True

    def stop(self) -> None:
        for peer in self.peers:
            peer.stop()
