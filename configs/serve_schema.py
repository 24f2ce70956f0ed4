"""Configuration of the Ray Serve application (DESIGN.md 5): lines, deployments, pools, HTTP.

Every role (expert, its FAISS shards, encoder, LLM and its tensor-parallel ranks, ingress)
asks for its own Ray resources (``PoolConfig``): fractional CPUs on one small machine, GPUs
or a custom resource such as ``pool_expert`` so a cluster gives each role its own nodes.
``gate`` and per-line thresholds are the live part: they travel as ``user_config`` and
change without a redeploy (``serve deploy`` with a new value, or ``serve.run`` again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from configs.schema_base import Strict

LINE_ID = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"


class PoolConfig(Strict):
    """Ray resources of one replica (or one actor) of a role."""

    num_cpus: float = Field(default=0.1, ge=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    accelerator_type: str | None = None  # e.g. "A100" (Ray accelerator_type)
    # Custom node resources, e.g. {pool_expert: 0.01}: only nodes started with that
    # resource (`ray start --resources '{"pool_expert": 100}'`) take the replica.
    resources: dict[str, float] = Field(default_factory=dict)

    def actor_options(self) -> dict:
        opts: dict = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            opts["resources"] = dict(self.resources)
        if self.accelerator_type:
            opts["accelerator_type"] = self.accelerator_type
        return opts

    def bundle(self) -> dict[str, float]:
        """The same request as a placement-group bundle."""
        out = {"CPU": self.num_cpus, **self.resources}
        if self.num_gpus:
            out["GPU"] = self.num_gpus
        return {k: v for k, v in out.items() if v > 0}


class AutoscalingConfig(Strict):
    """Replica count: fixed when ``min_replicas == max_replicas``, else Serve autoscaling."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=3.0, ge=0)
    downscale_delay_s: float = Field(default=30.0, ge=0)
    metrics_interval_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self

    def deployment_options(self) -> dict:
        if self.min_replicas == self.max_replicas:
            return {"num_replicas": self.max_replicas}
        return {"autoscaling_config": {
            "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
            "metrics_interval_s": self.metrics_interval_s, "look_back_period_s": 2 * self.metrics_interval_s,
        }}


class BatchingConfig(Strict):
    max_batch_size: int = Field(default=4, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, le=5.0)


class RoleConfig(Strict):
    pool: PoolConfig = PoolConfig()
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    max_ongoing_requests: int = Field(default=16, ge=1)


class ExpertRoleConfig(RoleConfig):
    shard_pool: PoolConfig = PoolConfig(num_cpus=0.05)  # each FAISS shard actor
    # One deployment serving every line's bank, loaded on demand (LRU per replica), instead
    # of one deployment per line.
    multiplex: bool = False
    max_lines_per_replica: int = Field(default=2, ge=1)


class EncoderRoleConfig(RoleConfig):
    batching: BatchingConfig = BatchingConfig()


class LLMRoleConfig(RoleConfig):
    enabled: bool = True
    # Tensor-parallel ranks (DeepSpeed AutoTP), co-scheduled in one placement group.
    tensor_parallel: int = Field(default=1, ge=1, le=16)
    rank_pool: PoolConfig = PoolConfig(num_cpus=0.5)  # each rank actor
    placement_strategy: Literal["STRICT_PACK", "PACK"] = "STRICT_PACK"
    accelerator: Literal["cpu", "auto"] = "cpu"  # DS_ACCELERATOR for the ranks
    batching: BatchingConfig = BatchingConfig()
    max_new_tokens: int | None = Field(default=None, ge=1, le=1024)  # None: model's


class GateConfig(Strict):
    """When the LLM explains a verdict (live: ``user_config`` of the ingress)."""

    # flagged: frames the expert flags (+ sample_rate of the rest); always; never.
    mode: Literal["flagged", "always", "never"] = "flagged"
    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    budget_s: float = Field(default=10.0, gt=0.0, le=600.0)  # wait this long for the answer
    max_inflight: int = Field(default=4, ge=0)  # LLM requests in flight per ingress replica
    chat_budget_s: float = Field(default=30.0, gt=0.0, le=600.0)


class AuthConfig(Strict):
    """Bearer token for every /v1 route; never stored in the repo or the config itself."""

    token_env: str | None = "MYRIAD_SERVE_TOKEN"
    token_file: Path | None = None
    # required: refuse to start without a token; otherwise no token found = open API.
    required: bool = False


class LimitsConfig(Strict):
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=16_000_000, ge=1024)
    max_question_chars: int = Field(default=500, ge=1)
    max_turns: int = Field(default=8, ge=1)  # per conversation
    max_conversations: int = Field(default=1000, ge=1)  # LRU


class HttpConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    access_log: bool = False  # streaming access logs halves throughput (PLATFORM.md)


class LineConfig(Strict):
    bank: Path  # a PatchCore bank directory (relative: under paths.home)
    threshold: float | None = Field(default=None, gt=0)  # None: the bank's calibrated one


class ServeConfig(Strict):
    app_name: str = Field(default="myriad", pattern=r"^[a-z0-9_\-]+$")
    lines: dict[str, LineConfig] = Field(default_factory=dict)
    # A trained Myriad model directory (training's export); None builds `model:` from config.
    model_dir: Path | None = None
    expert: ExpertRoleConfig = ExpertRoleConfig()
    encoder: EncoderRoleConfig = EncoderRoleConfig()
    llm: LLMRoleConfig = LLMRoleConfig()
    ingress: RoleConfig = RoleConfig()
    conversations_pool: PoolConfig = PoolConfig(num_cpus=0.01)
    # torch threads per replica (OMP_NUM_THREADS): 1 on a small shared machine.
    torch_threads: int = Field(default=1, ge=1, le=256)
    gate: GateConfig = GateConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    http: HttpConfig = HttpConfig()

    @model_validator(mode="after")
    def _line_ids(self) -> "ServeConfig":
        import re

        bad = [k for k in self.lines if not re.match(LINE_ID, k)]
        if bad:
            raise ValueError(f"line ids must match {LINE_ID}: {bad}")
        return self
