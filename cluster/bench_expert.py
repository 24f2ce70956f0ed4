"""Side-by-side expert benchmark: this project's PatchCore vs anomalib's, one run.

Each engine runs in its own spawned process so its peak memory (ru_maxrss) is its own;
both see the same data, backbone weights, layers, image size and coreset ratio.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def myriad_worker(config: str, overrides: list[str], data: str, category: str) -> dict:
    from actors.modeling.bank import open_bank
    from configs import load_config
    from training.evaluate import expert_metrics, predict_category, search_share
    from training.memory_bank import fit_bank
    from training.mvtec import open_category

    # Same images as the peer: the bank is built on all of train/good (the default cross_fit
    # calibration keeps none out; a fraction of 0 makes held_out do the same);
    # fit_seconds is the memory-bank build (features, coreset, index), as anomalib's fit is;
    # fit_total_seconds adds threshold calibration and saving.
    cfg = load_config(config, [*overrides, "expert.calibration_fraction=0"])
    cat = open_category(Path(data), category)
    with tempfile.TemporaryDirectory(prefix="myriad-bench-") as tmp:
        t0 = time.perf_counter()
        _, fitted = fit_bank(cfg.expert, cfg.paths.weights_dir, cat.train_good(), Path(tmp) / "bank", category, False)
        fit_total = time.perf_counter() - t0
        expert, meta = open_bank(Path(tmp) / "bank", cfg.expert, cfg.paths.weights_dir)
        pred = predict_category(expert, cat, progress=False)
    out = expert_metrics(pred, meta.threshold)
    out.pop("skipped", None)
    out.update({
        "fit_seconds": fitted.fit["fit_seconds"],
        "fit_total_seconds": fit_total,
        "train_images": fitted.fit["images"],
        "peak_memory_mb": _peak_mb(),
        **search_share(expert),
    })
    return out


def anomalib_worker(config: str, overrides: list[str], data: str, category: str) -> dict:
    from actors.modeling.weights import load_state_dict
    from cluster.bench_anomalib import run_anomalib_patchcore
    from configs import load_config

    cfg = load_config(config, overrides)
    e = cfg.expert
    out = run_anomalib_patchcore(
        Path(data),
        category,
        backbone_state_dict=load_state_dict(cfg.paths.weights_dir, e.backbone.kind.value),
        backbone=e.backbone.kind.value,
        layers=e.backbone.layers,
        image_size=e.image_size,
        coreset_ratio=e.coreset_ratio,
        num_neighbours=e.num_neighbours,
        heap_allocations=e.heap_allocations,
    )
    out.setdefault("peak_memory_mb", _peak_mb())
    return out


def anomalib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("anomalib") is not None


def run_bench(config: str, overrides: list[str], data: Path, category: str) -> dict:
    ctx = mp.get_context("spawn")
    result: dict = {}
    engines = [("myriad", myriad_worker)]
    if anomalib_available():
        engines.append(("anomalib", anomalib_worker))
    for name, worker in engines:
        with ctx.Pool(1) as pool:
            result[name] = pool.apply(worker, (config, list(overrides), str(data), category))
    if "anomalib" in result:
        m, a = result["myriad"], result["anomalib"]
        result["ratios"] = {
            "fit_speedup": a["fit_seconds"] / m["fit_seconds"],
            "predict_speedup": m["images_per_second"] / a["images_per_second"],
            "image_auroc_delta": m["image_auroc"] - a["image_auroc"],
            "peak_memory_ratio": m["peak_memory_mb"] / a["peak_memory_mb"],
        }
    else:
        result["anomalib"] = None
        result["ratios"] = None
    return result
