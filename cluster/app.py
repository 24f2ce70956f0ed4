"""The one Serve application builder: every deployment is bound together here, from config.

    ingress ──► expert-<line> (or one multiplexed ``expert``) ──► FaissShard actors
       ├──────► encoder (@serve.batch)
       ├──────► llm (@serve.batch; tensor-parallel ranks in its placement group)
       └──────► conversations

``build_app(cfg)`` is what tests and ``myriad serve`` call; ``app_builder(AppArgs)`` is the
typed builder a Serve config YAML names (``import_path: cluster.app:app_builder``, see
``configs/serve/``), so ``serve run`` / ``serve deploy`` build the same application.
"""

# No `from __future__ import annotations`: Serve reads the builder's AppArgs type at run time.

import logging
from pathlib import Path

from pydantic import BaseModel, Field
from ray.serve import Application

from actors.conversations import Conversations
from actors.encoder import Encoder, model_spec
from actors.expert_deployment import Expert, check_lines
from actors.ingress import Ingress, load_token
from actors.llm_server import LLMServer, rank_env
from cluster.resources import role_options
from configs import load_config
from configs.schema import MyriadClusterConfig
from configs.serve_schema import ServeConfig

log = logging.getLogger(__name__)


class AppArgs(BaseModel):
    """Arguments of the Serve YAML's ``args:`` (validated by Serve against this type)."""

    config: str = Field("small", description="preset name or YAML path")
    overrides: list[str] = Field(default_factory=list, description="key.path=value overrides")
    model_dir: str | None = Field(None, description="a trained Myriad model directory")


def app_builder(args: AppArgs) -> Application:
    cfg = load_config(args.config, args.overrides)
    if args.model_dir and cfg.serve is not None:
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"model_dir": Path(args.model_dir)})})
    return build_app(cfg)


def resolve_lines(cfg: MyriadClusterConfig) -> dict[str, dict]:
    """``{line: {"bank": absolute dir, "threshold": float | None}}``; relative banks under home."""
    out = {}
    for line, lc in cfg.serve.lines.items():
        bank = lc.bank if lc.bank.is_absolute() else cfg.paths.home / lc.bank
        out[line] = {"bank": str(bank.resolve()), "threshold": lc.threshold}
    return out


def build_app(cfg: MyriadClusterConfig) -> Application:
    """The whole application from ``cfg`` (needs ``serve:`` with at least one line)."""
    from cluster.cli import UserError

    sc: ServeConfig | None = cfg.serve
    if sc is None or not sc.lines:
        raise UserError("the config has no serve.lines: add `serve: {lines: {LINE: {bank: DIR}}}` "
                        "or --set serve.lines.LINE.bank=DIR")
    lines = resolve_lines(cfg)
    check_lines(lines)
    load_token(sc.auth)  # a required token that is missing fails here, not in a replica
    experts, multiplexed = _bind_experts(cfg, lines)
    encoder = llm = None
    if sc.llm.enabled:
        if cfg.model is None and sc.model_dir is None:
            raise UserError("serve.llm.enabled needs a `model:` section or serve.model_dir")
        encoder, llm = _bind_lmm(cfg)
    conversations = Conversations.options(
        ray_actor_options=sc.conversations_pool.actor_options()).bind(
        sc.limits.max_conversations, sc.limits.max_turns)
    work = max(cfg.expert.image_size, cfg.model.vision.image_size if cfg.model else 0)
    return Ingress.options(
        **role_options(sc, "ingress", sc.torch_threads), user_config={"gate": sc.gate.model_dump(mode="json")},
    ).bind(experts, multiplexed, encoder, llm, conversations, work,
           sc.limits.model_dump(mode="json"), sc.auth.model_dump(mode="json"), lmm_version(cfg))


def lmm_version(cfg: MyriadClusterConfig) -> str:
    """The served Myriad model's name in verdicts: the model directory's, or the untrained preset's."""
    import hashlib

    if cfg.serve.model_dir is not None:
        meta = Path(cfg.serve.model_dir) / "config.json"
        digest = hashlib.sha1(meta.read_bytes()).hexdigest()[:10] if meta.is_file() else "?"
        return f"myriad/{Path(cfg.serve.model_dir).name}@{digest}"
    return f"myriad/{cfg.preset}-untrained"


def _bind_experts(cfg: MyriadClusterConfig, lines: dict[str, dict]):
    sc = cfg.serve
    args = (cfg.expert.model_dump(mode="json"), str(cfg.paths.weights_dir),
            sc.expert.shard_pool.actor_options())
    user_config = {"thresholds": {}}
    opts = role_options(sc, "expert", sc.torch_threads)
    if sc.expert.multiplex:
        app = Expert.options(name="expert", user_config=user_config, **opts).bind(
            lines, *args, True, sc.expert.max_lines_per_replica)
        return None, (app, sorted(lines))
    experts = {
        line: Expert.options(name=f"expert-{line}", user_config=user_config, **opts).bind(
            {line: spec}, *args, False)
        for line, spec in lines.items()
    }
    return experts, None


def _bind_lmm(cfg: MyriadClusterConfig):
    sc = cfg.serve
    spec = model_spec(cfg.model, sc.model_dir, cfg.paths.weights_dir)
    batching = sc.encoder.batching.model_dump()
    encoder = Encoder.options(**role_options(sc, "encoder", sc.torch_threads)).bind(spec, batching)
    env = rank_env(sc.llm.accelerator, sc.llm.tensor_parallel, str(cfg.paths.home / "torch_extensions"))
    llm = LLMServer.options(**role_options(sc, "llm", sc.torch_threads)).bind(
        spec, sc.llm.tensor_parallel, sc.llm.rank_pool.actor_options(), env,
        sc.llm.max_new_tokens, sc.llm.batching.model_dump())
    return encoder, llm
