"""Ray resources and replica counts of each serving role, from ``serve:`` (pools).

``role_options(serve_cfg, role)`` is the one mapping from config to Serve deployment
options; ``deployment_options(app)`` reads them back from a built application (the pool
test checks each deployment asks for the pool its config names).
"""

from __future__ import annotations

from ray.serve import Application

from configs.serve_schema import RoleConfig, ServeConfig

ROLES = ("expert", "encoder", "llm", "ingress")


def role_options(cfg: ServeConfig, role: str, torch_threads: int = 1) -> dict:
    """Serve ``.options(...)`` of ``role``: resources, replicas/autoscaling, placement group."""
    rc: RoleConfig = getattr(cfg, role)
    opts: dict = {
        "ray_actor_options": {**rc.pool.actor_options(),
                              "runtime_env": {"env_vars": thread_env(torch_threads)}},
        "max_ongoing_requests": rc.max_ongoing_requests,
        **rc.autoscaling.deployment_options(),
    }
    if role == "llm":
        # Bundle 0: the replica; bundles 1..tp: the tensor-parallel ranks, co-scheduled.
        opts["placement_group_bundles"] = [rc.pool.bundle()] + [cfg.llm.rank_pool.bundle()] * cfg.llm.tensor_parallel
        opts["placement_group_strategy"] = cfg.llm.placement_strategy
    return opts


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def walk_deployments(app: Application) -> dict:
    """``{deployment name: Deployment}`` for every deployment bound into ``app``."""
    found: dict = {}

    def visit(obj) -> None:
        if isinstance(obj, Application):
            dep = obj._bound_deployment
            if dep.name in found:
                return
            found[dep.name] = dep
            visit(dep._replica_config.init_args)
            visit(dep._replica_config.init_kwargs)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    visit(app)
    return found


def deployment_options(app: Application) -> dict[str, dict]:
    """What each deployment of a built app asks Ray for (actor options, placement group)."""
    out = {}
    for name, dep in walk_deployments(app).items():
        rc = dep._replica_config
        out[name] = {
            "ray_actor_options": dict(dep.ray_actor_options or {}),
            "placement_group_bundles": rc.placement_group_bundles,
            "placement_group_strategy": rc.placement_group_strategy,
            "num_replicas": dep.num_replicas,
            "autoscaling_config": dep._deployment_config.autoscaling_config,
            "init_args": rc.init_args,
        }
    return out
