"""Interop: a frame produced by Debian's ``kcat`` (librdkafka, a different Kafka client from
the project's kafka-python) is processed like any other: same verdict as the same image sent
by kafka-python.

Debian's kcat links librdkafka 2.0.2, which cannot talk to the embedded Tansu broker; it is
pointed at the newer librdkafka bundled in the ``confluent-kafka`` wheel (PLATFORM.md). That
wheel names it ``librdkafka-<hash>.so.1``, so a ``librdkafka.so.1`` link to it goes in a
temporary folder on ``LD_LIBRARY_PATH``. ``.ci/run`` installs kcat (apt) and the ``dev`` extra
pins confluent-kafka; without them this test fails, naming what is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

from stream_helpers import frame, good_images, produce, stream_config

from streams.ingest import run_line_consumers
from streams.messages import Verdict
from streams.source import TopicReader


def kcat_env(tmp: Path) -> tuple[str, dict]:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed: `apt-get install -y kcat` (.ci/run does it)"
    spec = importlib.util.find_spec("confluent_kafka")
    assert spec and spec.submodule_search_locations, "confluent-kafka is not installed (the `dev` extra pins it)"
    libs = Path(next(iter(spec.submodule_search_locations))).parent / "confluent_kafka.libs"
    bundled = sorted(libs.glob("librdkafka*.so*"))
    assert bundled, f"no librdkafka in {libs}"
    link = tmp / "librdkafka" / "librdkafka.so.1"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(bundled[0])
    env = {**os.environ, "LD_LIBRARY_PATH": f"{link.parent}:{libs}"}
    version = subprocess.run([kcat, "-V"], env=env, capture_output=True, text=True, check=True).stdout
    assert "librdkafka 2.0." not in version, version  # the bundled, newer librdkafka is in use
    return kcat, env


def test_frame_from_kcat_gets_a_verdict(serve_handles, kafka_broker, tiny_dataset, tmp_path):
    line = "kcat"
    cfg = stream_config(tmp_path, line, ["streams.llm.mode=none"])
    s = cfg.streams
    kcat, env = kcat_env(tmp_path)
    kind, png = good_images(tiny_dataset)[-1]
    image = tmp_path / "frame.png"
    image.write_bytes(png)
    runtime = run_line_consumers(cfg, serve_handles, bootstrap=kafka_broker.bootstrap, archive=False)
    try:
        headers = {"frame_id": "kcat-0001", "line": line, "camera": "cam-kcat",
                   "capture_ts_ms": str(int(time.time() * 1000)), "content_type": "image/png"}
        cmd = [kcat, "-P", "-b", kafka_broker.bootstrap, "-t", s.topic(line, "frames"), "-k", "cam-kcat",
               *[a for k, v in headers.items() for a in ("-H", f"{k}={v}")], str(image)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        produce(cfg, kafka_broker.bootstrap, s.topic(line, "frames"), [frame(line, "kafka-python-0001", png)])
        reader = TopicReader(s, [s.topic(line, "verdicts"), s.topic(line, "dlq")], kafka_broker.bootstrap)
        out = reader.read_until(lambda rs: len(rs) >= 2, timeout_s=120)
        reader.close()
    finally:
        runtime.stop()
    assert all(r.topic.endswith(".verdicts") for r in out), [dict(r.headers) for r in out]
    verdicts = {v.frame_id: v for v in (Verdict.decode(r.value) for r in out)}
    assert set(verdicts) == {"kcat-0001", "kafka-python-0001"}
    a, b = verdicts["kcat-0001"], verdicts["kafka-python-0001"]
    assert (a.line, a.camera) == (line, "cam-kcat")
    assert a.decision == b.decision and abs(a.image_score - b.image_score) < 1e-6
    assert a.capture_ts_ms == int(headers["capture_ts_ms"])
