"""``myriad demo``: the main job on embedded defaults, start to finish, with a report.

Prepares the packaged weights, builds the real-texture benchmark, fits one PatchCore expert
per texture (each texture stands for a production line), evaluates it on held-out defects and
writes an HTML report with anomaly-map overlays.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from cluster.cli import add_config_args, config_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on embedded defaults and write a report")
    add_config_args(p)
    p.add_argument("--out", type=Path, default=None, help="default: <home>/demo")
    p.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"])
    p.add_argument("--figures", type=int, default=6, help="overlays per category in the report")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from actors.modeling import weights
    from actors.modeling.bank import open_bank
    from actors.modeling.preprocess import decode_image, resize_rgb
    from cluster.report import write_report
    from training.evaluate import expert_metrics, predict_category, search_share
    from training.memory_bank import fit_bank
    from training.mvtec import open_category
    from training.textures import build_textures

    cfg = config_from_args(args)
    out = args.out or cfg.paths.home / "demo"
    t0 = time.perf_counter()
    weights.prepare(cfg.paths.weights_dir)
    data = out / "textures"
    print(f"[1/3] building the texture benchmark in {data}")
    build_textures(data, seed=0, categories=tuple(args.categories))
    sections, summary = [], {}
    for i, name in enumerate(args.categories):
        print(f"[2/3] line {name!r}: fitting the expert on train/good ({i + 1}/{len(args.categories)})")
        category = open_category(data, name)
        t_fit = time.perf_counter()
        fit_bank(cfg.expert, cfg.paths.weights_dir, category.train_good(), out / "banks" / name, name)
        fit_seconds = time.perf_counter() - t_fit
        expert, meta = open_bank(out / "banks" / name, cfg.expert, cfg.paths.weights_dir)
        pred = predict_category(expert, category)
        metrics = expert_metrics(pred, meta.threshold)
        metrics.pop("skipped")
        metrics.update(fit_seconds=fit_seconds, **search_share(expert))
        summary[name] = metrics
        print(
            f"      image AUROC {metrics['image_auroc']:.3f}  pixel AUROC {metrics['pixel_auroc']:.3f}  "
            f"PRO {metrics['pro']:.3f}  accuracy {metrics['accuracy']:.3f}  "
            f"{metrics['images_per_second']:.1f} img/s"
        )
        order = np.argsort(-pred.scores)[: args.figures]
        figures = []
        for j in order:
            rgb = resize_rgb(decode_image(pred.paths[j]), cfg.expert.image_size)
            verdict = "NG" if pred.scores[j] > meta.threshold else "OK"
            truth = "defect" if pred.labels[j] else "good"
            caption = f"{Path(pred.paths[j]).parent.name}/{Path(pred.paths[j]).name}: {verdict} score {pred.scores[j]:.2f} (truth: {truth})"
            figures.append((caption, rgb, meta.normalize(pred.maps[j])))
        sections.append({"title": f"line {name}", "metrics": metrics, "figures": figures})
    report = write_report(out / "report.html", "Myriad Cluster demo: vision experts", sections)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"[3/3] report: {report}  summary: {out / 'summary.json'}  ({time.perf_counter() - t0:.0f}s)")
    return 0
