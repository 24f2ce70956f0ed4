"""A Serve replica killed mid-stream: the expert replica behind the ingress dies while frames
flow; Serve replaces it, the consumer retries (or restarts and replays from its last commit),
and every frame still gets its verdict: nothing lost, nothing in the DLQ."""

from __future__ import annotations

import collections
import threading
import time

from conftest import APP
from stream_helpers import frame, good_images, produce, stream_config

from cluster.stream_handles import kill_replica, replica_names
from streams.ingest import run_line_consumers
from streams.source import TopicReader


def test_expert_replica_killed_mid_stream(serve_handles, kafka_broker, tiny_dataset, tmp_path):
    line = "replica"
    cfg = stream_config(tmp_path, line, ["streams.consumer.batch_size=4", "streams.llm.mode=none"])
    s = cfg.streams
    images = good_images(tiny_dataset) * 6  # 48 frames, sent at ~12 frames/s
    records = [frame(line, f"cam-1-{i:04d}", png) for i, (_, png) in enumerate(images)]
    ids = {f"cam-1-{i:04d}" for i in range(len(images))}

    def camera() -> None:
        for i in range(0, len(records), 3):
            produce(cfg, kafka_broker.bootstrap, s.topic(line, "frames"), records[i : i + 3])
            time.sleep(0.25)

    runtime = run_line_consumers(cfg, serve_handles, bootstrap=kafka_broker.bootstrap, archive=False)
    cam = threading.Thread(target=camera)
    try:
        reader = TopicReader(s, [s.topic(line, "verdicts"), s.topic(line, "dlq")], kafka_broker.bootstrap)
        cam.start()
        out = reader.read_until(lambda rs: len(rs) >= 8, timeout_s=120)
        before = replica_names(APP, "expert")
        victim = kill_replica(APP, "expert")
        out += reader.read_until(lambda rs: {r.key.decode() for r in out + rs if r.topic.endswith(".verdicts")} >= ids,
                                 timeout_s=180)
        out += reader.read_until(lambda rs: False, timeout_s=2)  # late duplicates would show here
        reader.close()
        after = replica_names(APP, "expert")
        stats = runtime.stats()[line]
    finally:
        cam.join()
        runtime.stop()

    verdicts = collections.Counter(r.key.decode() for r in out if r.topic.endswith(".verdicts"))
    dlq = [r for r in out if r.topic.endswith(".dlq")]
    print(f"\nfault run (expert replica killed): frames in {len(ids)}, verdicts {len(verdicts)}, "
          f"DLQ {len(dlq)}, duplicates {sum(verdicts.values()) - len(verdicts)}, consumer stats {stats}")
    assert victim in before and victim not in after and after, (before, after)
    assert set(verdicts) == ids  # every frame has a verdict, no stray keys
    assert dlq == []  # a dead replica is a system error: retried, never a frame's fault
    assert sum(verdicts.values()) - len(verdicts) <= s.consumer.batch_size * s.consumer.max_in_flight
