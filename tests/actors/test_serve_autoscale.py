"""Autoscaling from config on the real cluster: the expert scales up under load and back
down after; lines share the expert through multiplexing (expert-only app, no LLM)."""

from __future__ import annotations

import time

APP = "myriad-autoscale"


def running(name: str) -> int:
    from ray import serve

    dep = serve.status().applications[APP].deployments[name]
    return dep.replica_states.get("RUNNING", 0)


def test_expert_scales_up_and_down_multiplexed(ray_cluster, tiny_bank, tiny_dataset):
    from ray import serve

    from cluster.app import build_app
    from configs import load_config

    cfg = load_config("tiny", [
        f"serve.app_name={APP}", f"serve.lines.a.bank={tiny_bank}", f"serve.lines.b.bank={tiny_bank}",
        "serve.llm.enabled=false", "serve.expert.multiplex=true",
        "serve.expert.autoscaling={min_replicas: 1, max_replicas: 2, target_ongoing_requests: 1,"
        " upscale_delay_s: 0, downscale_delay_s: 3, metrics_interval_s: 0.5}",
    ])
    good = (tiny_dataset / "stripes" / "test" / "good" / "000.png").read_bytes()
    handle = serve.run(build_app(cfg), name=APP, route_prefix=None)
    try:
        assert running("expert") == 1
        first = {line: handle.inspect.remote(good, line, line).result(timeout_s=120) for line in "ab"}
        assert first["a"]["score"] == first["b"]["score"] and first["a"]["line"] == "a"
        t0, peak = time.monotonic(), 1
        while time.monotonic() - t0 < 90 and peak < 2:
            batch = [handle.inspect.remote(good, "ab"[i % 2], str(i), "never") for i in range(12)]
            assert all(r.result(timeout_s=120)["ok"] for r in batch)
            peak = max(peak, running("expert"))
        assert peak == 2, "the expert did not scale up under load"
        t1 = time.monotonic()
        while time.monotonic() - t1 < 90 and running("expert") > 1:
            time.sleep(1)
        assert running("expert") == 1, "the expert did not scale back down when idle"
        print(f"scale-up after {t1 - t0:.1f}s of load, scale-down {time.monotonic() - t1:.1f}s after")
    finally:
        serve.delete(APP)
