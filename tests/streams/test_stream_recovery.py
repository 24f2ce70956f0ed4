"""Commit-after-produce: a consumer that dies after producing a batch's verdicts but before
committing it is restarted by Ray and replays that batch: no frame without a verdict, no
verdict key that is not a frame id, and only the replayed batch's keys appear twice."""

from __future__ import annotations

import collections

from stream_helpers import frame, good_images, produce, stream_config

from streams.connection import ensure_topics
from streams.ingest import run_line_consumers
from streams.source import TopicReader


def test_consumer_killed_before_commit_replays(serve_handles, kafka_broker, tiny_dataset, tmp_path):
    line = "recover"
    batch = 4
    cfg = stream_config(tmp_path, line, [f"streams.consumer.batch_size={batch}", "streams.consumer.max_in_flight=1",
                                         "streams.llm.mode=none"])
    s = cfg.streams
    images = good_images(tiny_dataset) * 3
    records = [frame(line, f"cam-1-{i:04d}", png) for i, (_, png) in enumerate(images)]
    ids = {f"cam-1-{i:04d}" for i in range(len(images))}
    ensure_topics(s, kafka_broker.bootstrap)
    produce(cfg, kafka_broker.bootstrap, s.topic(line, "frames"), records)

    marker = tmp_path / "crashed"
    runtime = run_line_consumers(cfg, serve_handles, bootstrap=kafka_broker.bootstrap, archive=False,
                                 fault={"crash_after_produce": 3, "marker": str(marker)})
    try:
        reader = TopicReader(s, [s.topic(line, "verdicts")], kafka_broker.bootstrap)
        out = reader.read_until(lambda rs: {r.key.decode() for r in rs} >= ids, timeout_s=150)
        out += reader.read_until(lambda rs: False, timeout_s=2)  # anything late would show here
        reader.close()
        stats = runtime.stats()[line]["consumers"][0]
    finally:
        runtime.stop()

    assert marker.exists(), "the fault point was never reached"
    assert stats["restarted"] is True and stats["running"] is True
    counts = collections.Counter(r.key.decode() for r in out)
    assert set(counts) == ids  # nothing lost, no stray keys
    replayed = sorted(k for k, n in counts.items() if n > 1)
    assert 1 <= len(replayed) <= batch and max(counts.values()) == 2, counts
    # The restarted consumer resumed from the committed offsets, not from the beginning.
    assert len(records) - 2 * batch <= stats["frames_in"] < len(records)
