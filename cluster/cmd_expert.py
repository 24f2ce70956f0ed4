"""``myriad expert fit|predict|evaluate``: the PatchCore vision expert from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from cluster.cli import UserError, add_config_args, config_from_args, dump_json

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("expert", help="fit, run and evaluate the PatchCore vision expert")
    esub = p.add_subparsers(dest="expert_command", required=True, metavar="ACTION")

    fit = esub.add_parser("fit", help="fit a memory bank on <data>/<category>/train/good")
    add_config_args(fit)
    fit.add_argument("--data", type=Path, required=True, help="dataset root (MVTec AD layout)")
    fit.add_argument("--category", required=True)
    fit.add_argument("--out", type=Path, required=True, help="bank directory to write")
    fit.add_argument("--shots", type=int, default=None, help="few-shot: use only the first k images")
    fit.set_defaults(handler=run_fit)

    pred = esub.add_parser("predict", help="score images; write anomaly-map overlays")
    add_config_args(pred)
    pred.add_argument("--bank", type=Path, required=True)
    pred.add_argument("images", type=Path, nargs="+")
    pred.add_argument("--out", type=Path, required=True, help="folder for overlays and scores.json")
    pred.set_defaults(handler=run_predict)

    ev = esub.add_parser("evaluate", help="image AUROC, pixel AUROC, PRO on <category>/test")
    add_config_args(ev)
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--category", required=True)
    ev.add_argument("--bank", type=Path, default=None, help="default: fit on train/good first")
    ev.add_argument("--json", type=Path, default=None, help="write the metrics here")
    ev.set_defaults(handler=run_evaluate)


def _fit(cfg, data: Path, category: str, out: Path, shots: int | None = None, progress: bool = True):
    from training.memory_bank import fit_bank
    from training.mvtec import open_category

    paths = open_category(data, category).train_good()
    if shots is not None:
        if shots < 1:
            raise UserError("--shots must be at least 1")
        paths = paths[:shots]
    t0 = time.perf_counter()
    expert, meta = fit_bank(cfg.expert, cfg.paths.weights_dir, paths, out, category, progress)
    return expert, meta, time.perf_counter() - t0


def run_fit(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    _, meta, seconds = _fit(cfg, args.data, args.category, args.out, args.shots)
    skipped = meta.fit["skipped"]
    print(
        f"bank {args.out}: {meta.fit['images']} images, {meta.fit['patches']} patches -> "
        f"{meta.size} in memory (dim {meta.dim}), threshold {meta.threshold:.4f}, {seconds:.1f}s"
    )
    for s in skipped:
        print(f"  skipped {s['path']}: {s['reason']}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from actors.modeling.bank import open_bank
    from actors.modeling.errors import ImageDecodeError
    from actors.modeling.overlay import side_by_side
    from actors.modeling.preprocess import decode_image, resize_rgb, to_batch

    cfg = config_from_args(args)
    expert, meta = open_bank(args.bank, cfg.expert, cfg.paths.weights_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    mean, std = expert.mean_std
    results, failed, used_names = [], [], set()
    for path in args.images:
        try:
            image = decode_image(path, max_pixels=cfg.expert.max_image_pixels)
        except ImageDecodeError as exc:
            print(f"{path}: skipped: {exc.reason} ({exc})")
            failed.append({"path": str(path), "reason": exc.reason})
            continue
        out = expert.predict(to_batch([image], cfg.expert.image_size, mean, std))
        score = float(out.scores[0])
        verdict = "NG" if score > meta.threshold else "OK"
        norm = meta.normalize(out.anomaly_maps[0])
        shown = resize_rgb(image, max(cfg.expert.image_size, 256))
        picture = side_by_side(shown, norm, label=f"{verdict} score {score:.3f} (thr {meta.threshold:.3f})")
        target = args.out / f"{_unique_name(path, used_names)}_overlay.png"
        from PIL import Image

        Image.fromarray(picture).save(target)
        results.append({"path": str(path), "score": score, "anomalous": score > meta.threshold,
                        "threshold": meta.threshold, "overlay": str(target)})
        print(f"{path}: {verdict} score={score:.4f} overlay={target}")
    (args.out / "scores.json").write_text(json.dumps({"results": results, "failed": failed}, indent=2))
    if not results:
        raise UserError("no input image could be read")
    return 0


def _unique_name(path: Path, used: set[str]) -> str:
    """``stem``, or ``parent_stem`` (then a counter) when another input had the same stem."""
    name = path.stem
    if name in used:
        name = f"{path.parent.name}_{path.stem}"
    base, n = name, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    used.add(name)
    return name


def run_evaluate(args: argparse.Namespace) -> int:
    from actors.modeling.bank import open_bank
    from training.evaluate import expert_metrics, predict_category, search_share
    from training.mvtec import open_category

    cfg = config_from_args(args)
    category = open_category(args.data, args.category)
    fit_seconds = None
    with tempfile.TemporaryDirectory(prefix="myriad-bank-") as tmp:
        if args.bank is None:
            _, _, fit_seconds = _fit(cfg, args.data, args.category, Path(tmp) / "bank")
            bank = Path(tmp) / "bank"
        else:
            bank = args.bank
        expert, meta = open_bank(bank, cfg.expert, cfg.paths.weights_dir)
        pred = predict_category(expert, category)
    metrics = expert_metrics(pred, meta.threshold)
    metrics.update({"fit_seconds": fit_seconds, "category": args.category, **search_share(expert)})
    _print_metrics(metrics)
    dump_json(metrics, args.json, default=_json_default)
    return 0


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _print_metrics(m: dict) -> None:
    def fmt(v):
        return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    keys = ("image_auroc", "pixel_auroc", "pro", "accuracy", "fit_seconds", "images_per_second", "search_share")
    print(f"{m.get('category', '')}: " + "  ".join(f"{k}={fmt(m.get(k))}" for k in keys))
    for s in m.get("skipped", []):
        print(f"  skipped {s['path']}: {s['reason']}")
