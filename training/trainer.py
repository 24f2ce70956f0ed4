"""The driver: data, banks and a ``TorchTrainer`` from one root config (DESIGN.md 6).

``run_training(cfg)`` works the same locally (``myriad train`` starts a local Ray when no
cluster is running) and as a job (``ray job submit --working-dir . -- python -m training``,
where ``RAY_ADDRESS`` points at the cluster). Restarting a run with the same ``run_name``
resumes from its latest checkpoint: the step, the optimizer state and the data stream
(each rank's sample ids continue after the last step taken).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from configs.train_schema import Backend, default_model_dir, storage_dir
from training.data import EVAL_ID_OFFSET, build_dataset, prepare, rank_ids, tokenizer_dir
from training.engine import latest_checkpoint

log = logging.getLogger(__name__)


def ensure_ray(cfg) -> bool:
    """Join the cluster ``RAY_ADDRESS`` names (set for ``ray job submit`` drivers, or by hand:
    ``RAY_ADDRESS=auto`` joins a ``ray start`` cluster), else start a private local Ray.

    Never joins an unnamed cluster by discovery: on a shared machine that may be someone
    else's. Returns True when this call started a local Ray (the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return False
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(cfg.train.scaling.threads_per_worker),
           "TORCH_EXTENSIONS_DIR": str(cfg.paths.home / "torch_extensions")}
    os.environ["RAY_worker_niceness"] = str(cfg.train.scaling.local_worker_niceness)
    # The dashboard (on 127.0.0.1, next free port from 8265) serves the state API that Ray
    # Train's placement-group cleaner polls; without it the cleaner logs a warning a second.
    ray.init(num_cpus=cfg.train.scaling.local_num_cpus, include_dashboard=True,
             dashboard_host="127.0.0.1", runtime_env={"env_vars": env})
    return True


def _backend(cfg) -> str:
    t = cfg.train
    if t.backend != Backend.auto:
        return t.backend.value
    return "nccl" if t.scaling.use_gpu else "gloo"


def build_trainer(cfg, extra: dict | None = None):
    """A ``TorchTrainer`` with per-rank datasets; returns (trainer, resume state or None)."""
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.train_loop import train_loop_per_worker

    if cfg.model is None or cfg.train is None:
        raise ValueError(f"config {cfg.preset!r} needs both `model` and `train` sections to train")
    t = cfg.train
    world = t.scaling.num_workers
    storage = storage_dir(cfg)
    resume = latest_checkpoint(storage / t.run_name)
    check_resumable(resume, storage / t.run_name)
    start_step = resume[1]["step"] if resume else 0
    sources, banks = prepare(cfg)
    tok_dir = tokenizer_dir(cfg)
    if t.data.fit_gate:
        cfg = fit_gate_thresholds(cfg, sources, banks, tok_dir, storage / t.run_name)
    per_rank = max(0, t.max_steps - start_step) * t.micro_batch_size * t.grad_accum
    datasets = {}
    for r in range(world):
        ids = rank_ids(start_step * t.global_batch, per_rank, r, world)
        datasets[f"train_{r}"] = build_dataset(cfg, sources, banks, ids, tok_dir)
        n_eval = t.data.eval_samples // world
        if n_eval:
            datasets[f"eval_{r}"] = build_dataset(
                cfg, sources, banks, rank_ids(EVAL_ID_OFFSET, n_eval, r, world), tok_dir)
    resources = {"CPU": t.scaling.cpus_per_worker, **t.scaling.resources_per_worker}
    if t.scaling.use_gpu:
        resources["GPU"] = t.scaling.gpus_per_worker
    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "backend": _backend(cfg),
        "eval": t.data.eval_samples // world > 0,
        "run_dir": str(storage / t.run_name),
        "data_start_step": start_step,
        "export_dir": str(default_model_dir(cfg)),
        "metrics_log": str(storage / t.run_name / "metrics.jsonl"),
        **(extra or {}),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=_backend(cfg)),
        scaling_config=ScalingConfig(num_workers=world, use_gpu=t.scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=t.run_name, storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
        datasets=datasets,
        dataset_config=DataConfig(
            datasets_to_split=[],
            execution_options=ray.data.ExecutionOptions(preserve_order=True)),
    )
    return trainer, resume


def check_resumable(resume: tuple[Path, dict] | None, run_dir: Path) -> None:
    """Refuse to resume a checkpoint written for another model layout (``FORMAT_VERSION``):
    DeepSpeed would fail deep in its loader on the first worker, with no hint at the cause."""
    from actors.modeling.checkpoint import FORMAT_VERSION
    from actors.modeling.lmm_errors import CheckpointError

    if resume is None:
        return
    have = resume[1].get("model_format")
    if have != FORMAT_VERSION:
        raise CheckpointError(
            f"{run_dir}: its latest checkpoint ({resume[0].name}) trained a model of format "
            f"{have if have is not None else '4 or older'}; this release trains format {FORMAT_VERSION} and "
            f"cannot resume it. Start a new run (--set train.run_name=NEW) or delete {run_dir}")


def fit_gate_thresholds(cfg, sources, banks, tok_dir: str | None, run_dir: Path):
    """``cfg`` with ``model.tpg``'s gate thresholds fit on synthetic samples of their own
    (``training.gate_fit``). The fit is kept in the run directory, so a resumed run (and its
    exported config) keeps the values it started from."""
    import numpy as np

    from training.gate_fit import GATE_ID_OFFSET, fit_gate

    path = Path(run_dir) / "gate_fit.json"
    tpg = cfg.model.tpg
    if path.is_file():
        fit = json.loads(path.read_text())
    else:
        n = cfg.train.data.fit_gate_samples
        ds = build_dataset(cfg, sources, banks, rank_ids(GATE_ID_OFFSET, n, 0, 1), tok_dir)
        rows = ds.select_columns(["map", "positions"]).take_all()
        maps = np.stack([np.asarray(r["map"], np.float32) for r in rows])  # (N, H, W)
        positions = [[p for p in r["positions"].split("|") if p] for r in rows]
        t, s, a, acc = fit_gate(maps, positions, tpg.grid,
                                (tpg.gate_threshold, tpg.share_threshold, tpg.share_base))
        fit = {"gate_threshold": t, "share_threshold": s, "share_base": a, "rule_exact": acc,
               "samples": len(rows)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fit, indent=2))
    keys = [k for k in ("gate_threshold", "share_threshold", "share_base") if k in fit]
    log.info("TPG gate starts at %s (%s)", {k: fit[k] for k in keys}, path)
    tpg = tpg.model_copy(update={k: fit[k] for k in keys})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"tpg": tpg})})


def run_training(cfg, extra: dict | None = None) -> dict:
    """Train (or resume) and export; returns the final metrics and where things are."""
    import ray

    started = ensure_ray(cfg)
    try:
        trainer, resume = build_trainer(cfg, extra)
        if resume:
            log.info("resuming %s from %s (step %d)", cfg.train.run_name, resume[0], resume[1]["step"])
        result = trainer.fit()
        if result.error:
            raise result.error
        summary = {
            "metrics": result.metrics,
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "resumed_from_step": resume[1]["step"] if resume else 0,
            "model_dir": str(default_model_dir(cfg)),
            "run_dir": str(storage_dir(cfg) / cfg.train.run_name),
        }
        log.info("training done: %s", json.dumps(summary, default=str))
        return summary
    finally:
        if started:
            ray.shutdown()
