"""Serving figures: ``myriad bench serve`` (HTTP latency/throughput vs the in-process
expert) and ``myriad bench tp`` (tensor-parallel 2 vs 1 on CPU: tokens/s, identical answers).

    myriad bench serve --config small --data .myriad/data/textures --category brick --json OUT
    myriad bench tp --config small --json OUT
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cluster.cli import UserError, add_config_args, config_from_args, dump_json
from configs.serve_schema import LineConfig


# An open question gives answers of many tokens (the defect instruction may end at once).
QUESTION = "Describe the surface in this picture in detail."


def register_bench(bsub) -> None:
    p = bsub.add_parser("serve", help="HTTP latency/throughput at 1/4/16 clients vs in-process expert")
    add_config_args(p)
    p.add_argument("--bank", type=Path, help="a bank to serve (default: fit one from --data)")
    p.add_argument("--data", type=Path, default=Path(".myriad/data/textures"))
    p.add_argument("--category", default="brick")
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    p.add_argument("--llm-requests", type=int, default=6)
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=run_serve_bench)
    t = bsub.add_parser("tp", help="tensor-parallel 2 vs 1 on CPU: tokens/s and identical answers")
    add_config_args(t)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--json", type=Path, default=None)
    t.set_defaults(handler=run_tp_bench)


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(ms)}


def _bank(cfg, args, workdir: Path) -> tuple[Path, list[Path]]:
    from training.memory_bank import fit_bank
    from training.mvtec import open_category

    cat = open_category(args.data, args.category)
    images = [s.path for s in cat.test_samples()]
    if args.bank:
        return args.bank, images
    out = workdir / "bank"
    fit_bank(cfg.expert, cfg.paths.weights_dir, cat.train_good(), out, args.category, progress=False)
    return out, images


def in_process_rate(cfg, bank: Path, images: list[bytes], seconds: float = 20.0) -> float:
    """Images/s of the expert in this process (decode + preprocess + predict, batch 1)."""
    from actors.modeling.bank import bank_config, open_bank
    from actors.modeling.preprocess import decode_image, to_batch

    ecfg = bank_config(bank, cfg.expert)
    expert, _ = open_bank(bank, ecfg, cfg.paths.weights_dir)
    expert.predict(to_batch([decode_image(images[0])], ecfg.image_size, *expert.mean_std))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        img = decode_image(images[n % len(images)])
        expert.predict(to_batch([img], ecfg.image_size, *expert.mean_std))
        n += 1
    return n / (time.perf_counter() - t0)


def _post(url: str, body: bytes, token: str | None) -> float:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "image/png"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000.0


def load(url: str, images: list[bytes], clients: int, n: int, token: str | None) -> dict:
    with ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        ms = list(pool.map(lambda i: _post(url, images[i % len(images)], token), range(n)))
        wall = time.perf_counter() - t0
    return {"clients": clients, **percentiles(ms), "throughput_rps": n / wall}


def run_serve_bench(args: argparse.Namespace) -> int:
    from ray import serve

    from cluster.app import build_app
    from cluster.runtime import connect, shutdown, start_serve

    cfg = config_from_args(args)
    if cfg.serve is None:
        raise UserError("the config has no serve: section")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        bank, paths = _bank(cfg, args, Path(tmp))
        images = [p.read_bytes() for p in paths[:16]]
        in_proc = in_process_rate(cfg, bank, images)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sc = cfg.serve.model_copy(update={
            "lines": {"line1": LineConfig(bank=bank)},
            "http": cfg.serve.http.model_copy(update={"port": port, "access_log": False})})
        cfg = cfg.model_copy(update={"serve": sc})
        connect(None, num_cpus=4, auth="disabled", log_to_driver=False)
        try:
            start_serve(cfg.serve.http)
            serve.run(build_app(cfg), name=cfg.serve.app_name, route_prefix="/")
            base = f"http://127.0.0.1:{port}/v1/inspect?line=line1&map=none"
            token = os.environ.get(cfg.serve.auth.token_env or "", None)
            load(base + "&llm=never", images, 4, 8, token)  # warm-up
            levels = [load(base + "&llm=never", images, c, args.requests, token) for c in (1, 4, 16)]
            llm = load(base + "&llm=always", images, 1, args.llm_requests, token)
        finally:
            shutdown(stop_ray=True)
    best = max(lv["throughput_rps"] for lv in levels)
    result = {"config": cfg.preset, "expert_in_process_images_per_s": in_proc, "expert_only": levels,
              "with_llm": llm, "serve_over_in_process": best / in_proc,
              "serve_1_client_over_in_process": levels[0]["throughput_rps"] / in_proc}
    print(f"in-process expert: {in_proc:.2f} images/s")
    for lv in levels:
        print(f"serve expert-only, {lv['clients']:>2} clients: p50 {lv['p50_ms']:.0f} ms  p99 "
              f"{lv['p99_ms']:.0f} ms  {lv['throughput_rps']:.2f} req/s")
    print(f"serve with LLM answer (1 client): p50 {llm['p50_ms']:.0f} ms  p99 {llm['p99_ms']:.0f} ms")
    print(f"best Serve throughput / in-process: {result['serve_over_in_process']:.2f}")
    dump_json(result, args.json)
    return 0


def run_tp_bench(args: argparse.Namespace) -> int:
    import ray
    import torch

    from actors.encoder import load_serving_model, model_spec
    from actors.llm_server import rank_env, start_tp_group
    from cluster.runtime import connect

    cfg = config_from_args(args)
    if cfg.model is None or cfg.serve is None:
        raise UserError("the config needs model: and serve: sections")
    spec = model_spec(cfg.model, cfg.serve.model_dir, cfg.paths.weights_dir)
    ref_model = load_serving_model(spec)
    torch.manual_seed(0)
    visual = (torch.randn(1, ref_model.num_visual_tokens, cfg.model.llm.hidden_size) * 0.1).numpy()
    max_new = cfg.serve.llm.max_new_tokens or cfg.model.max_new_tokens
    (reference,) = ref_model.generate_from_visual(torch.from_numpy(visual), [QUESTION], max_new)
    del ref_model
    connect(None, num_cpus=4, auth="disabled", log_to_driver=False)
    result: dict = {"config": cfg.preset, "max_new_tokens": max_new, "unsharded_answer": reference.text}
    try:
        for tp in (1, 2):
            env = rank_env(cfg.serve.llm.accelerator, tp, str(cfg.paths.home / "torch_extensions"))
            ranks = start_tp_group(spec, tp, {"num_cpus": 0.5}, env)
            try:
                times, out = [], None
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    out = ray.get([r.generate.remote(visual, [QUESTION], max_new) for r in ranks])[0][0]
                    times.append(time.perf_counter() - t0)
                sec = statistics.median(times)
                result[f"tp{tp}"] = {"answer": out["text"], "new_tokens": out["new_tokens"],
                                     "seconds": sec, "tokens_per_s": out["new_tokens"] / sec,
                                     "identical_to_unsharded": out["text"] == reference.text}
            finally:
                ray.get([r.close.remote() for r in ranks])
                for r in ranks:
                    ray.kill(r)
    finally:
        ray.shutdown()
    result["tp1_tp2_identical"] = result["tp1"]["answer"] == result["tp2"]["answer"]
    for tp in (1, 2):
        r = result[f"tp{tp}"]
        print(f"TP{tp}: {r['tokens_per_s']:.2f} tokens/s ({r['new_tokens']} tokens in {r['seconds']:.2f} s), "
              f"identical to unsharded: {r['identical_to_unsharded']}")
    if result["tp1"]["tokens_per_s"] > 0:
        print(f"TP2 / TP1 tokens/s: {result['tp2']['tokens_per_s'] / result['tp1']['tokens_per_s']:.2f}")
    dump_json(result, args.json)
    return 0

