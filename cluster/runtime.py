"""Starting Ray and Serve for the application (``myriad serve``, the serve benchmark).

Ray's own token auth (Ray 2.60 default): ``connect`` keeps whatever ``RAY_AUTH_MODE`` the
environment says. A local throw-away cluster for a benchmark may pass ``auth="disabled"``;
production runs with token auth (README, "Serving").
"""

from __future__ import annotations

import logging
import os

import ray
from ray import serve

from configs.serve_schema import HttpConfig

log = logging.getLogger(__name__)


def connect(address: str | None, num_cpus: float | None = None, auth: str | None = None,
            log_to_driver: bool = True) -> None:
    """Join ``address`` ("auto" or host:port) or start a local cluster."""
    if auth:
        os.environ["RAY_AUTH_MODE"] = auth
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ray.is_initialized():
        return
    kwargs = {"log_to_driver": log_to_driver, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Dashboard on 127.0.0.1 (next free port from 8265): the state API behind it is what
        # Ray Train's placement-group cleaner polls when the demo trains a model.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)


def start_serve(http: HttpConfig) -> None:
    """Serve's HTTP proxy on ``http.host:port``; access logs per config (off by default)."""
    serve.start(
        http_options={"host": http.host, "port": http.port},
        logging_config={"enable_access_log": http.access_log},
    )


def shutdown(stop_ray: bool) -> None:
    try:
        serve.shutdown()
    finally:
        if stop_ray:
            ray.shutdown()


def apply_serve_config(config: dict, timeout_s: float = 300.0) -> None:
    """What ``serve deploy config.yaml`` does, from Python: apply a Serve config (the
    ``applications:`` schema of ``configs/serve/*.yaml``) and wait until it runs.

    Applying again with only ``user_config`` changed reconfigures the running replicas
    (thresholds, LLM gate) without restarting them; ``serve.run`` would redeploy.
    """
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=config.get("http_options"))
    client.deploy_apps(schema)
    for app in schema.applications:
        client._wait_for_application_running(app.name, timeout_s=int(timeout_s))
