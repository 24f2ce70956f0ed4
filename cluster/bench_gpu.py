"""GPU figures of the training path at a preset's real shapes (issue #4's NCCL path).

``run_gpu_bench(cfg)`` builds the Myriad model on the GPU, wraps it in the training
engine (``training.engine.make_engine``: DeepSpeed ZeRO 1/2/3 on NCCL, or DDP) and runs
the training loop's own ``train_step`` on a batch laid out exactly like the Ray Data
pipeline's (``training.data_ops``); then greedy generation through ``MyriadModel.generate``.
It prints/writes per stage: samples/s, loss per step, peak GPU memory.

One rank (world size 1, a real NCCL process group): what one GPU worker of ``myriad train``
runs. Without the paper's weight directories (``model.*.weights``), ``--random-weights``
builds the same shapes randomly initialised with the byte-level tokenizer, which is what
the figures need (speed and memory do not depend on the weights' values).

    python -m cluster.bench_gpu --config paper --random-weights --json OUT
    myriad bench gpu --config paper --random-weights
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _init_process_group(backend: str) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend)


def synthetic_batch(cfg, n: int, size: int, tokenizer_dir: str | None, seed: int = 0) -> dict:
    """``n`` rows as the Ray Data pipeline hands them to ``train_loop_per_worker``: uint8
    images, float maps, and the text columns from the pipeline's own ``TextTokens`` stage
    (half the rows normal, half with one defect cell)."""
    from actors.modeling.grid import GRID_LABELS
    from training.data_ops import TextTokens

    rng = np.random.default_rng(seed)
    positions = ["" if i % 2 == 0 else GRID_LABELS[i % len(GRID_LABELS)] for i in range(n)]
    batch = {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             "map": rng.random((n, size, size), dtype=np.float32),
             "positions": np.asarray(positions)}
    return TextTokens(cfg.model.model_dump(mode="json"), tokenizer_dir)(batch)


def _build(cfg, random_weights: bool, device: str):
    import torch

    from actors.modeling.myriad import build_myriad
    from actors.modeling.tokenizer_tiny import AsciiTokenizer

    tok = AsciiTokenizer() if random_weights else None
    with torch.device(device):  # random init straight on the GPU: seconds, not minutes, for 7B
        model = build_myriad(cfg.model, cfg.paths.weights_dir, pretrained=not random_weights, tokenizer=tok)
    return model.to(device)


def run_gpu_bench(cfg, stages: tuple[int, ...] = (1, 2, 3), steps: int = 4, micro: int = 2,
                  new_tokens: int = 32, random_weights: bool = False, device: str = "cuda") -> dict:
    """``device="cpu"`` runs the same steps on gloo (a dry run of this bench on a CPU host)."""
    import torch

    from actors.modeling.myriad import parameter_counts
    from training.data import tokenizer_dir
    from training.engine import make_engine
    from training.param_groups import autocast_context
    from training.train_loop import train_step

    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("bench gpu needs a CUDA device; torch sees none (--device cpu: dry run)")
    if steps < 2:
        raise ValueError("--steps must be at least 2 (the first step is the warm-up)")
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _init_process_group("nccl" if cuda else "gloo")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    size = cfg.model.vision.image_size
    batch = synthetic_batch(cfg, micro, size, None if random_weights else tokenizer_dir(cfg))
    result: dict = {"preset": cfg.preset, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                    "torch": torch.__version__, "micro_batch": micro, "image_size": size,
                    "random_weights": random_weights, "stages": {}}
    for stage in stages:
        train = cfg.train.model_copy(update={
            "zero_stage": stage, "micro_batch_size": micro, "grad_accum": 1,
            "scaling": cfg.train.scaling.model_copy(update={"use_gpu": cuda, "num_workers": 1})})
        torch.manual_seed(train.seed)
        t0 = time.perf_counter()
        model = _build(cfg, random_weights, device)
        build_s = time.perf_counter() - t0
        if "parameters_total" not in result:
            counts = parameter_counts(model)
            result.update(parameters_total=counts["total"], parameters_trainable=counts["trainable"],
                          build_seconds=round(build_s, 1))
        engine = make_engine(model, train, 1)
        tok = model.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        autocast = functools.partial(autocast_context, train, device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        losses, times = [], []
        for _ in range(steps):
            sync()
            t0 = time.perf_counter()
            losses.append(train_step(engine, model, batch, pad, autocast))
            sync()
            times.append(time.perf_counter() - t0)
        step_s = float(np.median(times[1:]))
        result["stages"][f"zero{stage}"] = {
            "step_seconds": round(step_s, 4), "samples_per_s": round(micro / step_s, 2),
            "losses": [round(x, 4) for x in losses],
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
        log.info("zero%d: %s", stage, result["stages"][f"zero{stage}"])
        del engine, model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    # Generation as serving runs it: a plain model (no training engine, no ZeRO-3 partitions),
    # weights in bf16 on the device.
    model = _build(cfg, random_weights, device).to(torch.bfloat16)
    result["generate"] = _generate(model, batch, new_tokens, device, sync)
    return result


def _generate(model, batch, new_tokens: int, device: str, sync) -> dict:
    """Greedy answer to the batch's first image: seconds and tokens/s after a warm-up."""
    import torch

    model.eval()
    vit = model.preprocessor(list(batch["image"][:1]), list(batch["map"][:1]))
    dtype = next(model.parameters()).dtype
    pix, maps = vit.pixel_values.to(device, dtype), vit.maps.to(device, dtype)
    with torch.no_grad():
        model.generate(pix, maps, [None], max_new_tokens=4)  # warm-up
        sync()
        t0 = time.perf_counter()
        answer = model.generate(pix, maps, [None], max_new_tokens=new_tokens)[0]
        sync()
        s = time.perf_counter() - t0
    n = max(answer.new_tokens, 1)
    return {"seconds": round(s, 3), "new_tokens": answer.new_tokens, "tokens_per_s": round(n / s, 1),
            "weights_dtype": str(dtype)}


def register_bench(bsub) -> None:
    from cluster.cli import add_config_args

    p = bsub.add_parser("gpu", help="GPU: DeepSpeed ZeRO 1/2/3 on NCCL at a preset's shapes, generate")
    add_config_args(p, default="paper")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], choices=[0, 1, 2, 3])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--random-weights", action="store_true",
                   help="random init at the preset's shapes (no weight directories needed)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a dry run of the same steps on gloo")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=_run_cli)


def _run_cli(args) -> int:
    from cluster.cli import config_from_args, dump_json

    result = run_gpu_bench(config_from_args(args), tuple(args.stages), args.steps, args.micro,
                           args.tokens, args.random_weights, args.device)
    print(dump_json(result, args.json))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m cluster.bench_gpu", description=__doc__.split("\n")[0])
    bsub = p.add_subparsers(dest="what", required=True)
    register_bench(bsub)
    args = p.parse_args(["gpu", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
