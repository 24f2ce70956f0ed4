"""The stream consumers' inference handle: the Serve application, through Serve handles.

``streams`` never imports ``actors`` or ``cluster``; it gets a ``handle_factory(line)`` that
each consumer actor calls (again after a restart). This one returns the application's
ingress handle, whose ``inspect_batch`` / ``answer_batch`` methods implement the contract in
``streams.ingest`` (see ``actors.stream_api``)::

    runtime = start_streams(cfg, ServeHandles(cfg.serve.app_name), bootstrap=broker.bootstrap)

Batches travel as plain dicts and bytes (Ray's own serialisation between processes; nothing
pickled goes on the Kafka wire).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeHandles:
    """Picklable factory: ``ServeHandles(app_name)(line) -> DeploymentHandle`` of the ingress."""

    app_name: str = "myriad"

    def __call__(self, line: str):
        from ray import serve

        return serve.get_app_handle(self.app_name)


def serve_line_overrides(lines: dict[str, str]) -> list[str]:
    """``--set`` overrides that serve each stream line from its bank: ``{line: bank dir}``."""
    return [f"serve.lines.{line}.bank={bank}" for line, bank in lines.items()]


def replica_names(app_name: str, deployment: str) -> list[str]:
    """Actor names of a deployment's running replicas (namespace ``serve``)."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a.get("namespace") == "serve" and a["name"].startswith(prefix))


def kill_replica(app_name: str, deployment: str) -> str:
    """Kill one replica of ``deployment`` the hard way (``ray.kill``): the fault runs' victim.

    Serve's controller notices and starts a replacement; callers meanwhile get system errors
    (retried by the consumers) or wait in the router's queue. Returns the killed actor's name.
    """
    import ray

    names = replica_names(app_name, deployment)
    if not names:
        raise RuntimeError(f"no running replica of {app_name}/{deployment}")
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]
