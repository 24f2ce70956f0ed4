"""End to end on the real broker and Ray: frames -> verdicts, every bad record -> DLQ, archive.

One line, one consumer actor, the Serve application (the real PatchCore expert on a tiny bank and
the tiny Myriad LMM) behind Serve handles; LLM answers are limited to one in flight so flagged frames beyond
it are shed (the verdict says so) while every frame still gets its expert verdict.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib

from stream_helpers import frame, good_images, jpeg_of, produce, stream_config

from streams.archive import read_archive
from streams.ingest import run_line_consumers
from streams.messages import Reason, Verdict
from streams.source import TopicReader


def bomb_png(side: int = 20000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def garble(png: bytes) -> bytes:
    data = bytearray(png)
    for i in range(len(data) // 3, len(data) // 3 + 200):
        data[i] ^= 0x5A
    return bytes(data)


def bad_records(line: str, png: bytes) -> dict[str, tuple[tuple, str]]:
    """name -> (record, expected DLQ reason)."""
    jpg = jpeg_of(png)
    return {
        "zero-byte": (frame(line, "bad-empty", b""), Reason.EMPTY),
        "truncated-jpeg": (frame(line, "bad-trunc", jpg[: len(jpg) // 2], "image/jpeg"), Reason.TRUNCATED),
        # A sound header and end chunk around garbled pixel data: only the full decode in the
        # inference handle finds it, and the handle's FrameFailure routes it to the DLQ.
        "corrupt-png": (frame(line, "bad-corrupt", garble(png)), "corrupt"),
        "non-image": (frame(line, "bad-text", b"ERROR 42: sensor offline"), Reason.NOT_AN_IMAGE),
        "bomb": (frame(line, "bad-bomb", bomb_png()), Reason.IMAGE_TOO_LARGE),
        "missing-header": (frame(line, "bad-missing", png, drop=("camera",)), Reason.MISSING_HEADER),
        "wrong-header": (frame(line, "bad-ts", png, capture_ts_ms="yesterday"), Reason.BAD_HEADER),
        "unknown-line": (frame("press-9", "bad-line", png), Reason.UNKNOWN_LINE),
        "too-large": (frame(line, "bad-big", png + b"\0" * 70_000), Reason.RECORD_TOO_LARGE),
    }


def test_frames_to_verdicts_dlq_and_archive(serve_handles, kafka_broker, tiny_dataset, tmp_path):
    line = "pipe"
    cfg = stream_config(tmp_path, line, ["streams.max_record_bytes=65536", "streams.consumer.batch_size=4",
                                         "streams.llm.max_in_flight=1", "streams.llm.deadline_ms=30000"])
    s = cfg.streams
    images = good_images(tiny_dataset) * 2  # 16 frames: 8 good, 8 with a defect
    good = [frame(line, f"cam-1-{i:04d}", png) for i, (_, png) in enumerate(images)]
    kinds = {f"cam-1-{i:04d}": kind for i, (kind, _) in enumerate(images)}
    bad = bad_records(line, images[0][1])
    records = list(good)
    for i, (rec, _) in enumerate(bad.values()):  # interleave: bad records between good ones
        records.insert(2 * i + 1, rec)

    runtime = run_line_consumers(cfg, serve_handles, bootstrap=kafka_broker.bootstrap)
    try:
        produce(cfg, kafka_broker.bootstrap, s.topic(line, "frames"), records)
        reader = TopicReader(s, [s.topic(line, "verdicts"), s.topic(line, "dlq")], kafka_broker.bootstrap)
        out = reader.read_until(lambda rs: len(rs) >= len(records), timeout_s=180)
        reader.close()
        assert runtime.stats()[line]["frames_in"] == len(records)
    finally:
        final = runtime.stop()
    stats = final["consumers"][0]  # after stop: every batch completed and committed

    verdicts = [Verdict.decode(r.value) for r in out if r.topic.endswith(".verdicts")]
    dlq = [r for r in out if r.topic.endswith(".dlq")]
    # Every good frame has exactly one verdict, keyed by its frame id.
    assert sorted(v.frame_id for v in verdicts) == sorted(kinds)
    assert all(r.key.decode() == Verdict.decode(r.value).frame_id for r in out if r.topic.endswith(".verdicts"))
    # The expert decides: defect frames score above the good ones, and most are NG.
    by_kind = {k: [v.image_score for v in verdicts if kinds[v.frame_id] == k] for k in ("good", "blob")}
    assert min(by_kind["blob"]) > max(by_kind["good"]), by_kind
    assert sum(v.decision == "NG" for v in verdicts if kinds[v.frame_id] == "blob") >= 6
    ng = [v for v in verdicts if v.decision == "NG"]
    assert all(v.positions for v in ng) and all(v.model_versions.get("expert") for v in verdicts)
    # LMM: flagged frames are answered or shed (one answer in flight at most); OK frames skip it.
    statuses = {v.lmm.status for v in ng}
    assert statuses <= {"answered", "shed"} and {"answered", "shed"} <= statuses, [v.lmm for v in ng]
    assert all("busy" in v.lmm.reason for v in ng if v.lmm.status == "shed")
    assert all(v.lmm.status == "skipped" for v in verdicts if v.decision == "OK")
    assert all(v.timings_ms["total_ms"] >= v.timings_ms["queue_ms"] >= 0 for v in verdicts)

    # Every bad record is in the DLQ once, with its reason, original headers and bytes.
    reasons = {dict(r.headers).get("frame_id", b"").decode(): dict(r.headers) for r in dlq}
    assert len(dlq) == len(bad)
    for name, ((key, value, headers), want) in bad.items():
        fid = dict(headers).get("frame_id", b"").decode()
        got = reasons[fid]
        assert got["dlq_reason"].decode() == want, (name, got)
        assert got["dlq_source"].decode().startswith(s.topic(line, "frames") + "/")
        assert int(got["dlq_original_bytes"]) == len(value)
    by_fid = {dict(r.headers).get("frame_id", b"").decode(): r for r in dlq}
    assert by_fid["bad-text"].value == b"ERROR 42: sensor offline"
    assert by_fid["bad-big"].value == b""  # never re-shipped
    assert reasons["bad-corrupt"]["dlq_stage"] == b"inference"
    assert reasons["bad-trunc"]["dlq_stage"] == b"decode"

    # Consumer figures: every record counted, nothing in flight, lag drained.
    assert stats["frames_in"] == len(records)
    assert (stats["verdicts_out"], stats["dlq_out"]) == (len(good), len(bad))
    assert stats["llm_answered"] >= 1 and stats["llm_shed"] >= 1
    # Lag: exported as the `myriad_consumer_lag` Ray metric per partition, drained to 0.
    assert set(stats["lag_metric"]) == {f"{s.topic(line, 'frames')}/{p}" for p in (0, 1)}, stats["lag_metric"]
    assert stats["lag_total"] == 0
    assert stats["in_flight"] == 0 and stats["dlq_reasons"] == {r: sum(w == r for _, w in bad.values())
                                                                 for r in {w for _, w in bad.values()}}

    # Archive: one row per verdict, partitioned by line and capture date.
    table = read_archive(cfg.streams.archive.dir)
    assert table.num_rows == len(good)
    rows = {r["frame_id"]: r for r in table.to_pylist()}
    assert set(rows) == set(kinds)
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    assert {r["line"] for r in rows.values()} == {line} and {r["date"] for r in rows.values()} == {today}
    for v in verdicts:
        assert rows[v.frame_id]["decision"] == v.decision
        assert abs(rows[v.frame_id]["image_score"] - v.image_score) < 1e-9
    assert (cfg.streams.archive.dir / f"line={line}" / f"date={today}").is_dir()
