"""The streaming demo's live per-line summary and its report (HTML, Parquet, JSON)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


class LiveSummary:
    """Prints one line per production line from the consumers' figures."""

    def __init__(self, runtime, cams: dict) -> None:
        self.runtime, self.cams, self.t0 = runtime, cams, time.monotonic()

    def print(self, final: bool = False) -> None:
        stats = self.runtime.stats()
        tag = "final" if final else f"t={time.monotonic() - self.t0:4.0f}s"
        for line, cam in self.cams.items():
            s = stats.get(line, {})
            p50, p99 = s.get("latency_p50_ms") or 0, s.get("latency_p99_ms") or 0
            print(f"  [{tag}] {line:>8}: sent {len(cam.sent):4d}  verdicts {s.get('verdicts_out', 0):4d}  "
                  f"NG {s.get('ng', 0):3d}  DLQ {s.get('dlq_out', 0):2d}  p50 {p50:6.0f} ms  p99 {p99:6.0f} ms  "
                  f"lag {s.get('lag_total', 0):3d}  LMM answered {s.get('llm_answered', 0)} shed {s.get('llm_shed', 0)}",
                  flush=True)


def collect_verdicts(cfg, bootstrap: str, lines: list[str], ids: set[str], timeout_s: float) -> dict:
    """Read the lines' verdict topics until every sent frame has one: ``{frame_id: Verdict}``."""
    from streams.messages import Verdict
    from streams.source import TopicReader

    s = cfg.streams
    reader = TopicReader(s, [s.topic(n, "verdicts") for n in lines], bootstrap)
    try:
        records = reader.read_until(lambda rs: {r.key.decode() for r in rs} >= ids, timeout_s=timeout_s)
    finally:
        reader.close()
    out = {}
    for r in records:
        v = Verdict.decode(r.value)
        out[v.frame_id] = v  # idempotent by frame id: a replayed verdict replaces its twin
    return out


def _line_figures(cfg, bank: Path, line: str, ng: list, sent: dict, limit: int) -> list:
    """(caption, rgb, normalised map) of the highest-scoring NG frames of a line."""
    from actors.modeling.bank import open_bank
    from actors.modeling.preprocess import decode_image, resize_rgb, to_batch

    if not ng:
        return []
    expert, meta = open_bank(bank, cfg.expert, cfg.paths.weights_dir)
    mean, std = expert.mean_std
    figures, shown = [], set()
    for v in sorted(ng, key=lambda v: (v.lmm.status != "answered", -v.image_score)):
        path = Path(sent[v.frame_id][1])
        if path in shown or len(figures) >= limit:  # the camera cycles its images: each once
            continue
        shown.add(path)
        rgb = resize_rgb(decode_image(path.read_bytes(), cfg.expert.max_image_pixels), cfg.expert.image_size)
        amap = expert.predict(to_batch([rgb], cfg.expert.image_size, mean, std)).anomaly_maps[0]
        if v.lmm.status == "answered":
            lmm = f"LMM: \u201c{v.lmm.answer}\u201d"
        else:
            lmm = f"LMM {v.lmm.status}: {v.lmm.reason}"
        caption = (f"{v.frame_id} ({path.parent.name}/{path.name}): NG, score {v.image_score:.3g} > "
                   f"{v.threshold:.3g}, at {', '.join(v.positions) or '?'}; {lmm}")
        figures.append((caption, rgb, meta.normalize(amap)))
    return figures


def write_demo_report(cfg, out: Path, banks: dict[str, Path], evaluation: dict, result: dict,
                      figures: int, model_dir: Path | None) -> dict[str, Path]:
    import pyarrow.parquet as pq

    from cluster.report import write_report
    from streams.archive import read_archive
    from streams.runtime import archive_dir

    verdicts, sent, stats = result["verdicts"], result["sent"], result["stats"]
    sections, summary = [], {"model": str(model_dir) if model_dir else f"{cfg.preset} (untrained)", "lines": {}}
    for line, bank in banks.items():
        mine = [v for v in verdicts.values() if v.line == line]
        ng = [v for v in mine if v.decision == "NG"]
        truth = {fid: Path(p).parent.name for fid, (n, p) in sent.items() if n == line}
        s = stats.get(line, {})
        figures_ = {
            "frames sent": len(truth), "verdicts": len(mine), "NG": len(ng),
            "NG on defect frames": sum(truth.get(v.frame_id) != "good" for v in ng),
            "defect frames": sum(k != "good" for k in truth.values()),
            "DLQ": s.get("dlq_out", 0), "latency p50 ms": s.get("latency_p50_ms"),
            "latency p99 ms": s.get("latency_p99_ms"), "lag at end": s.get("lag_total"),
            "LMM answered": sum(v.lmm.status == "answered" for v in mine),
            "LMM shed": sum(v.lmm.status == "shed" for v in mine),
            "LMM failed": sum(v.lmm.status == "failed" for v in mine),
        }
        summary["lines"][line] = {"stream": figures_, "expert_evaluation": evaluation.get(line, {})}
        sections.append({"title": f"line {line}: stream", "metrics": figures_,
                         "figures": _line_figures(cfg, bank, line, ng, sent, figures)})
        sections.append({"title": f"line {line}: expert evaluation (held-out defects)",
                         "metrics": {k: v for k, v in evaluation.get(line, {}).items() if np.isscalar(v)}})
    report = write_report(out / "report.html", "Myriad Cluster demo: camera streams through Kafka and Ray Serve",
                          sections)
    table = read_archive(archive_dir(cfg))
    parquet = out / "verdicts.parquet"
    pq.write_table(table, parquet)
    summary["archived_rows"] = table.num_rows
    summary["archive_dir"] = str(archive_dir(cfg))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return {"report": report, "parquet": parquet, "summary": out / "summary.json"}
