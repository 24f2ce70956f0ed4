"""The LLM deployment: the Myriad LLM under ``deepspeed.init_inference``, tensor-parallel.

One replica owns one tensor-parallel group of ``TPRank`` actors, co-scheduled in the
replica's placement group (bundle 0: the replica; bundles 1..tp: the ranks, same node with
``STRICT_PACK``). Each rank sets what DeepSpeed's AutoTP needs on CPU (``LOCAL_SIZE``,
``OMP_NUM_THREADS=1``, gloo via ``init_distributed``), builds the same model, and shards the
LLM with ``init_inference(tensor_parallel={"tp_size": tp})``. A generate call goes to every
rank with the same inputs (one object-store copy); rank 0's answers are returned. Answers
equal the unsharded model's (``tests/actors/test_serve_tp.py``).

Handle API: ``generate(visual (V, D) float32, question: str | None, history) -> dict`` with
``text``, ``verdict`` (parsed yes/no + grid positions) and ``new_tokens``; calls are batched
(``@serve.batch``) into one left-padded greedy generation.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import socket

import numpy as np
import ray
import torch
from ray import serve
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.encoder import load_serving_model

log = logging.getLogger(__name__)
SHM_GLOB = "/dev/shm/deepspeed_*"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class TPRank:
    """One rank of a tensor-parallel LLM. Create with ``ray.remote(TPRank)``; then ``setup``."""

    def __init__(self, rank: int, world: int, spec: dict) -> None:
        self.rank, self.world, self.spec = rank, world, spec
        self.model = None
        self._shm_before = set(glob.glob(SHM_GLOB))

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, master_addr: str, master_port: int) -> dict:
        """Join the process group (blocks until every rank joins), build and shard the model."""
        os.environ.update({
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world), "LOCAL_RANK": str(self.rank),
            "LOCAL_SIZE": str(self.world), "LOCAL_WORLD_SIZE": str(self.world),
        })
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                                   verbose=False)
        model = load_serving_model(self.spec, keep="llm")
        engine = deepspeed.init_inference(
            model.llm, tensor_parallel={"tp_size": self.world}, dtype=torch.float32,
            replace_with_kernel_inject=False,
        )
        model.llm = engine.module
        self.model = model.eval()
        return {"rank": self.rank, "params": sum(p.numel() for p in model.llm.parameters())}

    def generate(self, visual: np.ndarray, questions: list[str | None], max_new: int | None) -> list[dict] | None:
        """visual (B, V, D) float32 -> one answer dict per row (rank 0 only; others None)."""
        answers = self.model.generate_from_visual(torch.from_numpy(visual), questions, max_new)
        if self.rank != 0:
            return None
        return [{"text": a.text, "verdict": a.verdict.as_dict(), "new_tokens": a.new_tokens}
                for a in answers]

    def conversation(self, history: list[tuple[str, str]], question: str) -> str:
        return self.model.template.conversation(history, question)

    def unlink_shm(self) -> int:
        """Remove the names of the /dev/shm buffers DeepSpeed made for this group.

        Called once every rank has set up (each has mapped every buffer): the memory stays
        mapped while the ranks live and is freed when they exit, even when killed, so no
        ~69 MB files are left behind.
        """
        removed = 0
        for path in set(glob.glob(SHM_GLOB)) - self._shm_before:
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass  # another rank of the group removed it first
        return removed

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self.unlink_shm()


RemoteTPRank = ray.remote(TPRank)


def start_tp_group(spec: dict, tp: int, rank_options: dict, env: dict[str, str],
                   placement_group=None, first_bundle: int = 1) -> list:
    """Start ``tp`` ranks (in ``placement_group`` bundles first_bundle.. when given), set up."""
    ranks = []
    for r in range(tp):
        opts = {**rank_options, "runtime_env": {"env_vars": env}}
        if placement_group is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group, placement_group_bundle_index=first_bundle + r)
        ranks.append(RemoteTPRank.options(**opts).remote(r, tp, spec))
    addr, port = ray.get(ranks[0].address.remote())
    ray.get([rk.setup.remote(addr, port) for rk in ranks])
    ray.get([rk.unlink_shm.remote() for rk in ranks])
    return ranks


def rank_env(accelerator: str, tp: int, extensions_dir: str) -> dict[str, str]:
    env = {"OMP_NUM_THREADS": "1", "LOCAL_SIZE": str(tp), "TORCH_EXTENSIONS_DIR": extensions_dir,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    return env


@serve.deployment(name="llm", ray_actor_options={"num_cpus": 0.05})
class LLMServer:
    """A tensor-parallel group behind a batched ``generate``."""

    def __init__(self, spec: dict, tp: int, rank_options: dict, env: dict[str, str],
                 max_new_tokens: int | None, batching: dict) -> None:
        pg = ray.util.get_current_placement_group()
        self.ranks = start_tp_group(spec, tp, rank_options, env, pg, first_bundle=1 if pg else 0)
        self.max_new = max_new_tokens
        self.tp = tp
        self._generate_batch.set_max_batch_size(batching["max_batch_size"])
        self._generate_batch.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])
        log.info("LLM replica up: tensor-parallel %d", tp)

    async def generate(self, visual: np.ndarray, question: str | None = None,
                       history: list[tuple[str, str]] | None = None) -> dict:
        """visual (V, D) float32 tokens from the encoder -> answer dict."""
        if history:
            question = await self.ranks[0].conversation.remote(list(history), question or "")
        return await self._generate_batch(np.asarray(visual, dtype=np.float32), question)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, visuals: list[np.ndarray], questions: list[str | None]) -> list[dict]:
        lengths = {v.shape[0] for v in visuals}
        if len(lengths) != 1:  # every encoder replica gives the same V; guard anyway
            return [await self._run(v[None], [q]) for v, q in zip(visuals, questions)]
        return await self._run(np.stack(visuals), list(questions))

    async def _run(self, visual: np.ndarray, questions: list[str | None]) -> list[dict]:
        ref = ray.put(visual)
        # Submitted back to back (no await in between): every rank sees calls in one order.
        refs = [rk.generate.remote(ref, questions, self.max_new) for rk in self.ranks]
        out = await asyncio.gather(*refs)
        return out[0]

    def info(self) -> dict:
        return {"tensor_parallel": self.tp}

    def __del__(self) -> None:
        for rk in getattr(self, "ranks", []):
            try:
                ray.get(rk.close.remote(), timeout=10)
                ray.kill(rk)
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
