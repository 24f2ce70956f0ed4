"""Fixtures of the streams tests: the real Serve application behind the stream consumers."""

from __future__ import annotations

import socket

import pytest

APP = "myriad-streams"
# Every line the streams tests use is served (one multiplexed expert deployment, tiny bank).
LINES = ("pipe", "recover", "replica", "kcat")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def serve_handles(ray_cluster, tiny_bank):
    """The tiny Myriad application (expert + encoder + LLM + ingress) on the shared Ray
    cluster; yields the consumers' handle factory. Deleted at the end of the package."""
    from ray import serve

    from cluster.app import build_app
    from cluster.stream_handles import ServeHandles, serve_line_overrides
    from configs import load_config

    cfg = load_config("tiny", [f"serve.app_name={APP}", "serve.expert.multiplex=true",
                               f"serve.expert.max_lines_per_replica={len(LINES)}", "serve.auth.token_env=null",
                               *serve_line_overrides({line: str(tiny_bank) for line in LINES})])
    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()},
                logging_config={"enable_access_log": False})
    serve.run(build_app(cfg), name=APP, route_prefix=f"/{APP}")
    try:
        yield ServeHandles(APP)
    finally:
        serve.delete(APP)
        serve.shutdown()
