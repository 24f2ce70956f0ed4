"""Fixtures of the streams tests."""

from __future__ import annotations

import pytest


@pytest.fixture()
def stream_env(ray_cluster, kafka_broker, tiny_bank):
    """Start an inspector for a line; everything started is stopped at the end."""
    from cluster.local_inspector import inspector_name, start_inspector

    started = []

    def start(cfg, line: str, with_lmm: bool = False):
        actor = start_inspector(cfg, tiny_bank, name=inspector_name(line), num_cpus=0.5, with_lmm=with_lmm)
        started.append(actor)
        return actor

    yield start
    for actor in started:
        ray_cluster.kill(actor, no_restart=True)
