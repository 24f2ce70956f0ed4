"""Figures of the Myriad LMM (issue #3): sizes, a training step, generation speed.

``run_model_bench(cfg)`` returns a dict (printed as JSON by ``python -m cluster.bench_model``):

- parameters total / trainable;
- one forward + backward on a batch of 2 at the ViT size: seconds and peak RSS during the step;
- generation of a fixed-length answer: seconds and tokens/s, against plain
  ``LlamaForCausalLM.generate`` on the same text-only prompt in the same run; the per-token
  overhead of the multimodal wrapper is reported both end to end and decode-only
  (``(t(n) - t(1)) / (n - 1)``, i.e. without the one-off encoder and prefill).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import torch

log = logging.getLogger(__name__)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> bool:
    try:  # Linux: writing 5 resets VmHWM (the peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_model_bench(cfg, new_tokens: int = 30, repeats: int = 2, threads: int = 2) -> dict:
    from actors.modeling.myriad import build_myriad, parameter_counts

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_myriad(cfg.model, cfg.paths.weights_dir)
    build_s = time.perf_counter() - t0
    counts = parameter_counts(model)
    s = cfg.model.vision.image_size
    x, m = torch.randn(2, 3, s, s), torch.rand(2, 1, s, s)
    tmpl = model.template
    batch = model.encode_text([None, None], [tmpl.answer([]), tmpl.answer(["top left", "center"])])

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x, m, batch.text_ids, batch.text_mask, labels=batch.labels).loss.backward()

    model.train()
    step()  # warm-up
    rss_before = _rss_mb("VmRSS")
    peak_ok = _reset_peak()
    step_s = _timed(step, repeats)
    peak = _rss_mb("VmHWM") if peak_ok else float("nan")
    model.zero_grad(set_to_none=True)
    model.eval()

    # Generation: exactly `new_tokens` tokens (min_new_tokens forces the length) for both.
    x1, m1 = x[:1], m[:1]
    visual = model.encode(x1, m1).joined()
    text = model.encode_text([None])
    tok = model.tokenizer
    prompt_ids = torch.cat([model.prefix_ids, text.text_ids[0]])[None]  # text-only prompt

    def wrapper(n: int):
        return lambda: model.llm.generate(**_mm_inputs(model, x1, m1, text), max_new_tokens=n,
                                          min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)

    def plain(n: int):
        return lambda: model.llm.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                          max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                          pad_token_id=tok.eos_token_id)

    with torch.no_grad():
        wrapper(2)(), plain(2)()  # warm-up
        mm_n, mm_1 = _timed(wrapper(new_tokens), repeats), _timed(wrapper(1), repeats)
        pl_n, pl_1 = _timed(plain(new_tokens), repeats), _timed(plain(1), repeats)
        answer = model.generate(x1, m1, [None], max_new_tokens=new_tokens)[0]
    mm_decode = (mm_n - mm_1) / (new_tokens - 1)
    pl_decode = (pl_n - pl_1) / (new_tokens - 1)
    return {
        "preset": cfg.preset,
        "threads": threads,
        "build_seconds": round(build_s, 2),
        "parameters_total": counts["total"],
        "parameters_trainable": counts["trainable"],
        "visual_tokens": model.num_visual_tokens,
        "prompt_tokens_text_only": int(prompt_ids.shape[1]),
        "train_step_batch2_seconds": round(step_s, 3),
        "train_step_peak_rss_mb": round(peak, 1),
        "rss_before_step_mb": round(rss_before, 1),
        "generate_tokens": new_tokens,
        "generate_seconds_multimodal": round(mm_n, 3),
        "generate_seconds_plain_llm": round(pl_n, 3),
        "tokens_per_s_multimodal": round(new_tokens / mm_n, 2),
        "tokens_per_s_plain_llm": round(new_tokens / pl_n, 2),
        "overhead_per_token_end_to_end": round(mm_n / pl_n - 1.0, 3),
        "decode_ms_per_token_multimodal": round(1000 * mm_decode, 2),
        "decode_ms_per_token_plain_llm": round(1000 * pl_decode, 2),
        "overhead_per_token_decode": round(mm_decode / pl_decode - 1.0, 3),
        "visual_context_tokens_in_kv": int(visual.shape[1]),
        "sample_answer": answer.text,
    }


def _mm_inputs(model, x, m, text) -> dict:
    """inputs_embeds + mask exactly as ``MyriadModel.generate`` builds them (batch of 1)."""
    visual = model.encode(x, m).joined()[0]
    n = int(text.text_mask[0].sum())
    emb = torch.cat([model._embed(model.prefix_ids), visual, model._embed(text.text_ids[0, :n])])[None]
    return {"inputs_embeds": emb, "attention_mask": torch.ones(emb.shape[:2], dtype=torch.long)}


def register_bench(bsub) -> None:
    """``myriad bench model``: parameter counts, forward+backward, generate vs plain LLM."""
    from pathlib import Path

    from cluster.cli import add_config_args

    p = bsub.add_parser("model", help="Myriad LMM: params, fwd+bwd, generate tokens/s vs plain LLM")
    add_config_args(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=_run_cli)


def _run_cli(args) -> int:
    from cluster.cli import config_from_args, dump_json

    result = run_model_bench(config_from_args(args), args.tokens, args.repeats, args.threads)
    print(dump_json(result, args.json, default=float))
    return 0


def main(argv: list[str] | None = None) -> int:
    from configs import load_config

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(argv[0] if argv else "small", argv[1:])
    print(json.dumps(run_model_bench(cfg), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
