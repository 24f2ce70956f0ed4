"""One training-engine interface over DeepSpeed (ZeRO 0-3) and plain torch DDP.

``make_engine`` builds the optimizer from ``train:`` and wraps the model; the loop only
calls ``loss``, ``backward``, ``step``, ``save``, ``load`` and ``gathered`` (full weights on
every rank, for export under ZeRO-3). DeepSpeed checkpoints are DeepSpeed's own per-rank
shards (training state only, read back only by this code from its own run directory); the
DDP engine writes safetensors. Models are exported as safetensors (``training.export``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from configs.train_schema import Strategy, TrainConfig
from training.param_groups import build_optimizer, deepspeed_config

log = logging.getLogger(__name__)
STATE_FILE = "myriad_state.json"


class Engine:
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def loss(self, *args) -> torch.Tensor:
        return self.model(*args).loss

    @property
    def boundary(self) -> bool:
        return True

    @contextlib.contextmanager
    def gathered(self):
        yield self.module


class DeepSpeedEngine(Engine):
    def __init__(self, model, train: TrainConfig, world: int) -> None:
        import deepspeed

        opt = build_optimizer(model, train)
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=opt, config=deepspeed_config(train, world))
        self.module = self.model.module
        self.stage = train.zero_stage

    @property
    def boundary(self) -> bool:
        return self.model.is_gradient_accumulation_boundary()

    def backward(self, loss) -> None:
        self.model.backward(loss)

    def step(self) -> None:
        self.model.step()

    def save(self, directory: Path, state: dict) -> None:
        self.model.save_checkpoint(str(directory), tag="ds", client_state={"myriad": state},
                                   save_latest=False, exclude_frozen_parameters=True)

    def load(self, directory: Path) -> dict:
        _, client = self.model.load_checkpoint(str(directory), tag="ds", load_module_strict=False)
        if client is None:
            raise RuntimeError(f"{directory}: no DeepSpeed checkpoint could be loaded")
        return client["myriad"]

    @contextlib.contextmanager
    def gathered(self):
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                yield self.module
        else:
            yield self.module


class DDPEngine(Engine):
    """torch DDP + the same optimizer, clipping and accumulation as the DeepSpeed path."""

    def __init__(self, model, train: TrainConfig, world: int) -> None:
        self.module = model
        self.optimizer = build_optimizer(model, train)
        self.model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        self.accum, self.clip = train.grad_accum, train.optimizer.grad_clip
        self.micro = 0

    @property
    def boundary(self) -> bool:
        return (self.micro + 1) % self.accum == 0

    def backward(self, loss) -> None:
        (loss / self.accum).backward()

    def step(self) -> None:
        if self.boundary:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro += 1

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().contiguous() for n, p in self.module.named_parameters() if p.requires_grad}

    def save(self, directory: Path, state: dict) -> None:
        if dist.is_initialized() and dist.get_rank() != 0:
            return
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self._trainable(), str(directory / "trainable.safetensors"))
        names = {id(p): n for n, p in self.module.named_parameters()}
        tensors, meta = {}, {}
        for g in self.optimizer.param_groups:
            for p in g["params"]:
                for k, v in self.optimizer.state.get(p, {}).items():
                    key = f"{names[id(p)]}::{k}"
                    if torch.is_tensor(v):
                        tensors[key] = v.detach().contiguous()
                    else:
                        meta[key] = v
        save_file(tensors, str(directory / "optimizer.safetensors"))
        (directory / "ddp_state.json").write_text(json.dumps({"myriad": state, "scalars": meta}))

    def load(self, directory: Path) -> dict:
        weights = load_file(str(directory / "trainable.safetensors"))
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
        opt = load_file(str(directory / "optimizer.safetensors"))
        extra = json.loads((directory / "ddp_state.json").read_text())
        for key, v in list(opt.items()) + list(extra["scalars"].items()):
            name, k = key.split("::")
            self.optimizer.state[params[name]][k] = v
        return extra["myriad"]


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest complete checkpoint of a run directory (``checkpoint_<step>/``): rank 0's
    state file present and, for DeepSpeed ZeRO, one optimizer shard per rank."""
    best = None
    for state_file in Path(run_dir).glob(f"checkpoint_*/{STATE_FILE}"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        shards = list(state_file.parent.glob("ds/zero_pp_rank_*_optim_states.pt"))
        if shards and len(shards) != state.get("world_size", len(shards)):
            continue  # a rank's shard is missing: the run died while this one was written
        if best is None or state["step"] > best[1]["step"]:
            best = (state_file.parent, state)
    return best


def make_engine(model, train: TrainConfig, world: int) -> Engine:
    if train.strategy == Strategy.ddp:
        return DDPEngine(model, train, world)
    return DeepSpeedEngine(model, train, world)
