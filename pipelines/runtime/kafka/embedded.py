"""A real single-node Apache Kafka broker in KRaft mode (no ZooKeeper), run as a
JVM child process from jars fetched from Maven Central."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipelines.runtime import jars
from pipelines.settings import EmbeddedKafkaSettings, KafkaSettings


class BrokerError(RuntimeError):
    """The embedded broker cannot be started or stopped; the message says why."""


_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}"><PatternLayout pattern="[%d] %p %m (%c)%n"/></File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def broker_coordinates(version: str) -> list[str]:
    # kafka-tools brings kafka-producer-perf-test (used by the benchmark);
    # slf4j 2 + log4j2 give the broker a real log instead of slf4j's NOP logger.
    return [
        f"org.apache.kafka:kafka_2.13:{version}",
        f"org.apache.kafka:kafka-tools:{version}",
        "org.slf4j:slf4j-api:2.0.16",
        "org.apache.logging.log4j:log4j-slf4j2-impl:2.24.3",
        "org.apache.logging.log4j:log4j-core:2.24.3",
    ]


@dataclass(frozen=True)
class BrokerPaths:
    data_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.log_dir / "broker.pid"

    @property
    def properties(self) -> Path:
        return self.log_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "broker.log"


def _paths(emb: EmbeddedKafkaSettings) -> BrokerPaths:
    return BrokerPaths(Path(emb.data_dir), Path(emb.log_dir))


def _port_open(port: int, host: str = "localhost") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _running_pid(paths: BrokerPaths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
        return None  # the pid was reused by something else
    return pid


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Java is not installed (need Java 17+ on PATH) for the embedded Kafka")
    return java


def _classpath(emb: EmbeddedKafkaSettings) -> str:
    try:
        return ":".join(str(j) for j in jars.fetch("kafka", broker_coordinates(emb.version)))
    except jars.JarFetchError as exc:
        raise BrokerError(f"cannot download Kafka {emb.version} jars: {exc}") from exc


def _write_config(emb: EmbeddedKafkaSettings, paths: BrokerPaths) -> None:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@localhost:{emb.controller_port}",
        "listeners": f"PLAINTEXT://localhost:{emb.port},CONTROLLER://localhost:{emb.controller_port}",
        "advertised.listeners": f"PLAINTEXT://localhost:{emb.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(paths.data_dir),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "4",
        # Records up to a few MiB pass the broker so that silver, not Kafka,
        # decides what is oversize and quarantines it with a reason.
        "message.max.bytes": "8388608",
        "log.retention.hours": "-1",
    }
    paths.properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (paths.log_dir / "log4j2.xml").write_text(_LOG4J2.format(log=paths.log_file))


def _format_storage(java: str, classpath: str, paths: BrokerPaths) -> None:
    if (paths.data_dir / "meta.properties").exists():
        return
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    result = subprocess.run(
        [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
         # `=` form: an id may start with '-', which would parse as an option.
         f"--cluster-id={cluster_id}", "-c", str(paths.properties)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise BrokerError(f"formatting KRaft storage failed: {result.stderr.strip()[-300:]}")


def up(kafka: KafkaSettings) -> str:
    """Start the broker (if not running), wait until it answers, create topics."""
    emb = kafka.embedded
    paths = _paths(emb)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    pid = _running_pid(paths)
    if pid is None:
        for port in (emb.port, emb.controller_port):
            if _port_open(port):
                raise BrokerError(f"port {port} is already in use by another process")
        java = _java()
        classpath = _classpath(emb)
        _write_config(emb, paths)
        _format_storage(java, classpath, paths)
        with open(paths.log_dir / "broker.out", "ab") as out:
            proc = subprocess.Popen(
                [java, f"-Xmx{emb.heap}", f"-Xms{emb.heap}", "-XX:+UseG1GC",
                 "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={paths.log_dir / 'log4j2.xml'}",
                 "-cp", classpath, "kafka.Kafka", str(paths.properties)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        paths.pid_file.write_text(str(proc.pid))
        _wait_ready(kafka, proc, paths)
        state = f"started Kafka {emb.version} (pid {proc.pid})"
    else:
        state = f"Kafka already running (pid {pid})"
    created = ensure_topics(kafka)
    suffix = f", created topics {', '.join(created)}" if created else ""
    return f"{state} on localhost:{emb.port}{suffix}"


def _wait_ready(kafka: KafkaSettings, proc: subprocess.Popen, paths: BrokerPaths) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + kafka.embedded.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"Kafka exited with code {proc.returncode}; see {paths.log_file}")
        if _port_open(kafka.embedded.port):
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=kafka.bootstrap, request_timeout_ms=3000,
                    client_id="lakehouse-up",
                )
                admin.list_topics()
                admin.close()
                return
            except (KafkaError, OSError):
                pass
        time.sleep(0.5)
    raise BrokerError(
        f"Kafka did not answer within {kafka.embedded.start_timeout_s}s; see {paths.log_file}"
    )


def ensure_topics(kafka: KafkaSettings) -> list[str]:
    """Create the configured topics that do not exist yet; return their names."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="lakehouse-topics")
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(t.name, num_partitions=t.partitions, replication_factor=1)
            for t in kafka.topics.values()
            if t.name not in existing
        ]
        if wanted:
            # Another `up` may race us; the topics then exist, which is the goal.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        admin.close()


def down(kafka: KafkaSettings, timeout_s: float = 60) -> str:
    """Stop the broker cleanly (SIGTERM, controlled shutdown); idempotent."""
    paths = _paths(kafka.embedded)
    pid = _running_pid(paths)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        return "Kafka is not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _running_pid(paths) is None:
            break
        _reap(pid)
        time.sleep(0.3)
    else:
        os.kill(pid, signal.SIGKILL)
    paths.pid_file.unlink(missing_ok=True)
    return f"stopped Kafka (pid {pid})"


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def status(kafka: KafkaSettings) -> dict[str, object]:
    paths = _paths(kafka.embedded)
    return {
        "pid": _running_pid(paths),
        "port_open": _port_open(kafka.embedded.port),
        "log": str(paths.log_file),
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc), for the benchmark."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set size
            return int(line.split()[1]) / 1024
    return float("nan")
