"""Apache Kafka brokers on loopback for the tests and the benchmarks, beside `scripts/kafka.sh`
(the single local broker): a KRaft cluster of `size` nodes (each broker and controller, one
quorum), optionally with a SASL_SSL listener (SCRAM-SHA-512, certificates from a CA the caller
makes) and the StandardAuthorizer. The jars are the ones `scripts/kafka.sh fetch` resolved from
Maven Central. Each node can be SIGKILLed and started again on its ports and log directory.

    .venv/bin/python -m devtools.kafka_nodes up [--size 3] [--dir .facestream/kafka-cluster]   # prints the bootstrap
    .venv/bin/python -m devtools.kafka_nodes down [--dir ...]
(`scripts/kafka.sh cluster-up|cluster-down` runs these.) A SASL_SSL listener is made from Python
(`KafkaNodes(..., secured=Secured(...))` with `make_certificates`), as tests/test_secure.py does.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
READY_S = 90.0


def kafka_lib() -> Path:
    """The broker jars (`scripts/kafka.sh fetch` puts them there; the install step runs it)."""
    home = Path(os.environ.get("FACESTREAM_HOME", ROOT / ".facestream"))
    lib = home / "kafka-lib"
    if not (lib / ".complete").exists():
        subprocess.check_call(["bash", str(ROOT / "scripts" / "kafka.sh"), "fetch"])
    return lib


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Secured:
    """A SASL_SSL listener: the broker's key and certificate chain (one PEM file), the CA its
    clients trust (PEM), the super user the brokers and the operator act as, and SCRAM users made
    when the storage is formatted (name: password)."""

    keystore_pem: Path
    ca_pem: Path
    admin: str
    admin_password: str
    users: dict[str, str] = field(default_factory=dict)


class Node:
    def __init__(self, node_id: int, folder: Path, port: int, controller_port: int) -> None:
        self.node_id = node_id
        self.folder = folder
        self.port = port
        self.controller_port = controller_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, limit: int = 3000) -> str:
        path = self.folder / "kafka.log"
        return path.read_text(errors="replace")[-limit:] if path.exists() else ""


class KafkaNodes:
    """A KRaft cluster of `size` combined broker/controller nodes on free loopback ports. With
    three, topics are meant to be made with replication factor 3 and min.insync.replicas 2:
    one node may be lost without losing an acknowledged write or stopping the pipeline."""

    def __init__(self, folder: Path, size: int = 3, secured: Secured | None = None, heap_mb: int = 512) -> None:
        self.folder = folder
        self.size = size
        self.secured = secured
        self.heap_mb = heap_mb
        self.nodes = [Node(i + 1, folder / f"node{i + 1}", free_port(), free_port()) for i in range(size)]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def _config(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = min(3, self.size)
        min_isr = max(1, replicas - 1)
        listener = "SASL_SSL" if self.secured else "PLAINTEXT"
        lines = [
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners={listener}://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners={listener}://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map={listener}:{listener},CONTROLLER:PLAINTEXT",
            f"inter.broker.listener.name={listener}",
            f"log.dirs={node.folder / 'data'}",
            "num.partitions=1",
            f"default.replication.factor={replicas}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={replicas}",
            "offsets.topic.num.partitions=8",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={replicas}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            "unclean.leader.election.enable=false",
            # A node that stops heartbeating is fenced (out of every ISR, its partitions led by
            # others) after this long; the default 9 s stalls acks=all writes that long.
            "broker.session.timeout.ms=3000",
            "broker.heartbeat.interval.ms=500",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "message.max.bytes=16777216",
            "replica.fetch.max.bytes=16777216",
        ]
        if self.secured is not None:
            sec = self.secured
            jaas = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{sec.admin}" password="{sec.admin_password}";'
            )
            lines += [
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={sec.keystore_pem}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={sec.ca_pem}",
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                # The controller listener is loopback PLAINTEXT (KRaft controllers cannot take SCRAM):
                # its unauthenticated principal is the nodes' own traffic.
                f"super.users=User:{sec.admin};User:ANONYMOUS",
                "allow.everyone.if.no.acl.found=false",
            ]
        return "\n".join(lines) + "\n"

    def _java(self, *args: str, log: Path | None = None) -> list[str]:
        return [
            "java",
            f"-Xms{min(256, self.heap_mb)}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",  # C1 only: starts faster, and a test broker is not CPU-bound
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={ROOT / 'kafka' / 'log4j2.yaml'}",
            "-cp",
            f"{kafka_lib()}/*",
            *args,
        ]

    def start(self) -> KafkaNodes:
        cluster_id = _kafka_uuid()
        for node in self.nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            (node.folder / "server.properties").write_text(self._config(node))
            if not (node.folder / "data" / "meta.properties").exists():
                scram = []
                if self.secured is not None:
                    users = {self.secured.admin: self.secured.admin_password, **self.secured.users}
                    for name, password in users.items():
                        scram += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
                format_cmd = self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(node.folder / "server.properties"),
                    *scram,
                )
                done = subprocess.run(format_cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"formatting node {node.node_id} failed:\n{done.stdout}\n{done.stderr}")
        for node in self.nodes:
            self.start_node(node.node_id, wait=False)
        for node in self.nodes:
            self.wait_node(node.node_id)
        return self

    def start_node(self, node_id: int, wait: bool = True) -> None:
        """Start node `node_id` (again, after a kill: same ports, same log directory)."""
        node = self.nodes[node_id - 1]
        with open(node.folder / "kafka.log", "ab") as out:
            node.process = subprocess.Popen(
                self._java("kafka.Kafka", str(node.folder / "server.properties")),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.folder,
            )
        (node.folder / "kafka.pid").write_text(str(node.process.pid))
        if wait:
            self.wait_node(node_id)

    def wait_node(self, node_id: int, limit_s: float = READY_S) -> None:
        node = self.nodes[node_id - 1]
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"kafka node {node_id} exited {node.process.returncode}:\n{node.log_tail()}")
            if _answers(node.port):
                return
            time.sleep(0.3)
        raise RuntimeError(f"kafka node {node_id} did not answer within {limit_s} s:\n{node.log_tail()}")

    def kill_node(self, node_id: int) -> None:
        """SIGKILL node `node_id`: no controlled shutdown, no leadership handed over (a crash)."""
        node = self.nodes[node_id - 1]
        if node.alive():
            assert node.process is not None
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(30)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """A CA of its own and a broker certificate it signs for 127.0.0.1 and localhost, one day
    valid: (the broker's key and chain as one PEM file, the CA's certificate as PEM)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "facestream test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    keystore = folder / "broker.pem"
    keystore.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem)
        + ca.public_bytes(pem)
    )
    keystore.chmod(0o600)
    ca_pem = folder / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(pem))
    return keystore, ca_pem


def _kafka_uuid() -> str:
    """A cluster id as Kafka writes them: 16 random bytes, url-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _is_broker(pid: int) -> bool:
    """`pid` is alive and a Kafka broker (not another process that got its number since)."""
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(folder.glob("node*/kafka.pid"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.kafka_nodes", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / ".facestream" / "kafka-cluster")
    args = parser.parse_args(argv)
    if args.command == "down":
        pids = [pid for pid in _pids(args.dir) if _is_broker(pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(_is_broker(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.3)  # a controlled shutdown hands leadership over first
        for pid in pids:
            if _is_broker(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for f in args.dir.glob("node*/kafka.pid"):
            f.unlink()
        print(f"kafka cluster: {len(pids)} node(s) stopped")
        return 0
    if any(_is_broker(pid) for pid in _pids(args.dir)):
        print(f"kafka cluster: {args.dir} holds a running cluster; `down` first", file=sys.stderr)
        return 1
    cluster = KafkaNodes(args.dir, args.size).start()
    print(cluster.bootstrap)
    print(
        f"kafka cluster: {args.size} node(s) running in the background, state in {args.dir}; "
        f"set FACESTREAM_KAFKA_BOOTSTRAP={cluster.bootstrap} (and a replication factor up to {args.size})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
