"""``train_loop_per_worker``: the one Ray Train loop (DESIGN.md 6; STYLE.md "Train").

Every rank: build the model from config -> engine (DeepSpeed ZeRO or DDP) -> restore the
latest checkpoint when there is one -> read its own Ray Data shard -> steps with gradient
accumulation, a log line every ``log_every`` steps (loss, samples/s), a held-out synthetic
evaluation every ``eval_every`` -> every rank saves, then ``ray.train.report`` -> at the end
rank 0 exports the model directory serving loads (``training.export``).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("training.loop")


def _setup_env(cfg) -> None:
    """Per-rank process settings (PLATFORM.md: threads, DeepSpeed on CPU, JIT cache)."""
    import torch

    s = cfg.train.scaling
    torch.set_num_threads(s.threads_per_worker)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cfg.paths.home / "torch_extensions"))
    if not s.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ["LOCAL_SIZE"] = os.environ.get("LOCAL_WORLD_SIZE", str(s.num_workers))


def _batches(shard, micro: int):
    return shard.iter_batches(batch_size=micro, batch_format="numpy", prefetch_batches=2,
                              drop_last=True)


def _inputs(model, batch, pad_id):
    """A numpy batch -> model inputs, on the model's device."""
    from training.data_ops import collate

    vit = model.preprocessor(list(batch["image"]), [m.astype(np.float32) for m in batch["map"]])
    ids, mask, labels = collate(batch, pad_id)
    device = model.prefix_ids.device
    return tuple(t.to(device, non_blocking=True)
                 for t in (vit.pixel_values, vit.maps, ids, mask, labels))


def train_step(engine, model, batch, pad_id, autocast) -> float:
    """One micro-batch: forward under ``autocast``, backward, optimizer step at the
    accumulation boundary; returns the loss."""
    pix, maps, ids, mask, labels = _inputs(model, batch, pad_id)
    with autocast():
        loss = engine.loss(pix, maps, ids, mask, labels)
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def worker_device(use_gpu: bool):
    """This rank's device: the GPU Ray Train assigned to this worker, made torch's current
    device (NCCL binds to it), else the CPU."""
    import torch

    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.scaling.use_gpu is true but this worker sees no CUDA device")
    import ray.train.torch

    device = ray.train.torch.get_device()
    torch.cuda.set_device(device)
    return device


def _all_mean(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def evaluate(engine, model, batches, pad_id, autocast) -> dict:
    """Teacher-forced loss, yes/no (first answer token) and whole-answer token accuracy."""
    import torch

    from actors.modeling.myriad import IGNORE

    engine.model.eval()
    loss_sum, first_ok, exact_ok, n = 0.0, 0, 0, 0
    with torch.no_grad(), autocast():
        for batch in batches:
            pix, maps, ids, mask, labels = _inputs(model, batch, pad_id)
            out = engine.model(pix, maps, ids, mask, labels)
            head = out.logits.shape[1] - ids.shape[1]
            pred = out.logits[:, head - 1:-1].argmax(-1)  # (B, T) predicts labels
            valid = labels != IGNORE
            first = valid.float().argmax(1)
            rows = torch.arange(len(ids))
            first_ok += int((pred[rows, first] == labels[rows, first]).sum())
            exact_ok += int(((pred == labels) | ~valid).all(1).sum())
            loss_sum += float(out.loss) * len(ids)
            n += len(ids)
    engine.model.train()
    loss, first, exact = _all_mean([loss_sum / max(n, 1), first_ok / max(n, 1), exact_ok / max(n, 1)])
    return {"eval_loss": loss, "eval_yes_no_acc": first, "eval_answer_acc": exact}


def _append(path: str | None, record: dict) -> None:
    """One JSON line per log step in ``<run dir>/metrics.jsonl`` (rank 0)."""
    if path:
        import json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _first_kill(config: dict) -> bool:
    """True once per run: a marker file records that the injected kill happened."""
    marker = Path(config["kill_marker"])
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("killed")
    return True


def _checkpoint(engine, state: dict, metrics: dict, rank: int) -> None:
    import ray.train

    from training.engine import STATE_FILE

    with tempfile.TemporaryDirectory(prefix="myriad-ckpt-") as tmp:
        engine.save(Path(tmp), state)
        if rank == 0:
            import json

            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{state['step']:07d}")


def _restore(engine, config: dict) -> dict:
    import ray.train

    from training.engine import latest_checkpoint

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            return engine.load(Path(d))
    # Ray registers a checkpoint only once it has collected every rank's report; a worker
    # that dies right after reporting can lose it there, but not on disk: scan the run.
    found = latest_checkpoint(Path(config["run_dir"])) if config.get("run_dir") else None
    if found is not None:
        return engine.load(found[0])
    return {"step": 0, "samples": 0}


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch

    from actors.modeling.checkpoint import FORMAT_VERSION
    from actors.modeling.myriad import build_myriad
    from configs import load_config
    from training.engine import make_engine
    from training.export import export_model
    from training.param_groups import autocast_context, set_lr

    cfg = load_config(config["config"])
    t = cfg.train
    _setup_env(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device(t.scaling.use_gpu)  # before NCCL starts: it binds the current device
    if t.strategy.value == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend=config["backend"])
    torch.manual_seed(t.seed)
    model = build_myriad(cfg.model, cfg.paths.weights_dir).to(device)
    engine = make_engine(model, t, world)
    state = _restore(engine, config)
    state["world_size"] = world
    state["model_format"] = FORMAT_VERSION  # what `trainer.check_resumable` compares
    if state["step"]:
        log.info("rank %d: resumed at step %d", rank, state["step"])
        if rank == 0:
            _append(config.get("metrics_log"), {"resumed_at": state["step"]})
    autocast = functools.partial(autocast_context, t, device.type)

    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eval_shard = ray.train.get_dataset_shard(f"eval_{rank}") if config.get("eval") else None
    eval_batches = list(_batches(eval_shard, t.micro_batch_size)) if eval_shard is not None else []
    shard = ray.train.get_dataset_shard(f"train_{rank}")
    t0 = last_t = time.perf_counter()
    losses, micro, last_step_logged = [], 0, state["step"]
    metrics: dict = {"step": state["step"]}
    saved_at = state["step"]
    stop = state["step"] >= t.max_steps
    kill_at = config.get("kill_at_step")
    batches = iter([] if stop else _batches(shard, t.micro_batch_size))
    # The shard starts at the driver's resume step; after an in-run restart from a later
    # checkpoint, skip what the lost worker group had consumed so the samples continue.
    for _ in range((state["step"] - config.get("data_start_step", 0)) * t.grad_accum):
        next(batches, None)
    for batch in batches:
        lr = set_lr(engine.optimizer, state["step"], t)
        losses.append(train_step(engine, model, batch, pad, autocast))
        micro += 1
        if micro % t.grad_accum:
            continue
        state["step"] += 1
        state["samples"] += t.global_batch
        step = state["step"]
        elapsed = time.perf_counter() - t0
        over = 1.0 if t.max_minutes and elapsed > 60 * t.max_minutes else 0.0
        stop = step >= t.max_steps or _all_mean([over])[0] > 0
        if step % t.log_every == 0 or stop:
            mean_loss = _all_mean([float(np.mean(losses))])[0]
            now = time.perf_counter()
            sps = (step - last_step_logged) * t.global_batch / (now - last_t)
            metrics = {"step": step, "loss": mean_loss, "lr": lr, "samples_per_s": sps,
                       "elapsed_s": elapsed, "samples": state["samples"]}
            if rank == 0:
                log.info("step %d loss %.4f lr %.2e samples/s %.2f elapsed %.0fs",
                         step, mean_loss, lr, sps, elapsed)
                _append(config.get("metrics_log"), metrics)
            losses, last_t, last_step_logged = [], now, step
        if eval_batches and (step % t.eval_every == 0 or stop):
            metrics.update(evaluate(engine, model, eval_batches, pad, autocast))
            if rank == 0:
                log.info("step %d eval %s", step, {k: round(v, 4) for k, v in metrics.items()
                                                  if k.startswith("eval")})
                _append(config.get("metrics_log"), {k: v for k, v in metrics.items()
                                                    if k == "step" or k.startswith("eval")})
        if step % t.checkpoint_every == 0 or stop:
            _checkpoint(engine, dict(state), metrics, rank)
            saved_at = step
        if kill_at is not None and step == kill_at and rank == world - 1 and _first_kill(config):
            # Fault injection (tests): this rank dies between checkpoints, as in a crash.
            log.warning("rank %d: fault injection, killing this worker after step %d", rank, step)
            os._exit(1)
        if stop:
            break
    if saved_at != state["step"]:  # the data ran out before max_steps
        _checkpoint(engine, dict(state), metrics, rank)
    if config.get("export_dir"):
        with engine.gathered() as module:
            if rank == 0:
                export_model(module, Path(config["export_dir"]), {**metrics, **state, "world_size": world})
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    _remove_shm_buffers(ctx.get_local_rank())


def _remove_shm_buffers(local_rank: int) -> None:
    """DeepSpeed's CPU all-reduce leaves /dev/shm/deepspeed_*_<addr>_<port>_<rank> (~70 MB
    each, PLATFORM.md): remove this rank's, named by this process group's own port."""
    import glob

    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        return
    for path in glob.glob(f"/dev/shm/deepspeed_*_{addr}_{port}_{local_rank}"):
        try:
            os.remove(path)
        except OSError:
            pass
