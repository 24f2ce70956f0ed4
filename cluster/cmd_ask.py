"""``myriad ask``: one question about one image to the Myriad LMM.

    myriad ask --preset tiny --image part.png --question "Is the left edge scratched?"
    myriad ask --model runs/export/model --image part.png --bank .myriad/banks/screws

With ``--bank`` the anomaly map comes from that PatchCore memory bank (normalised by the
bank's threshold into [0, 1]); without one the map is all zeros and the output says so.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("ask", help="ask the Myriad LMM about an image")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="build the model from a preset (tiny, small, ...)")
    src.add_argument("--model", type=Path, help="a saved Myriad model directory")
    p.add_argument("--image", type=Path, required=True, help="image file (PNG, JPEG, ...)")
    p.add_argument("--bank", type=Path, help="PatchCore memory bank giving the anomaly map")
    p.add_argument("--question", default=None,
                   help="question (default: the Myriad defect instruction)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --preset (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run_ask)


def expert_map(bank_dir: Path, image: np.ndarray, cfg) -> tuple[np.ndarray, dict]:
    """The bank's anomaly map for ``image`` (H, W, 3) in [0, 1] at the image's size (H, W).

    The PatchCore distances are background-centred and normalised by the bank's decision
    threshold (``patchcore.lmm_map``: the threshold lands on 0.5).
    """
    from actors.modeling.bank import bank_config, open_bank
    from actors.modeling.patchcore import lmm_map
    from actors.modeling.preprocess import resize_map, to_batch

    expert_cfg = bank_config(bank_dir, cfg.expert)
    expert, meta = open_bank(bank_dir, expert_cfg, cfg.paths.weights_dir)
    mean, std = expert.mean_std
    out = expert.predict(to_batch([image], expert_cfg.image_size, mean, std))
    norm = lmm_map(out.anomaly_maps[0], meta.threshold, meta.normal_level)  # (S_e, S_e) in [0, 1]
    amap = np.clip(resize_map(norm, image.shape[0], image.shape[1]), 0.0, 1.0)
    score = float(out.scores[0])
    return amap, {"score": score, "threshold": meta.threshold, "anomalous": score > meta.threshold,
                  "category": meta.category}


def _load_model(args):
    from actors.modeling.checkpoint import load_model_dir
    from actors.modeling.myriad import build_myriad
    from configs import ConfigError, load_config

    if args.model is not None:
        model = load_model_dir(args.model)
        cfg = load_config("small", args.overrides)  # expert base + paths for --bank
        return model, cfg
    cfg = load_config(args.preset, args.overrides)
    if cfg.model is None:
        raise ConfigError(f"preset {args.preset!r} has no `model` section")
    return build_myriad(cfg.model, cfg.paths.weights_dir), cfg


def run_ask(args: argparse.Namespace) -> int:
    import torch

    from actors.modeling.preprocess import decode_image

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    image = decode_image(args.image)
    model, cfg = _load_model(args)
    model.eval()
    info: dict = {"map": "none: no --bank given, the anomaly map is all zeros"}
    amap = None
    if args.bank is not None:
        amap, expert = expert_map(args.bank, image, cfg)
        info = {"map": f"expert bank {args.bank}", "expert": expert}
    inputs = model.preprocessor([image], [amap])
    answer = model.generate(inputs.pixel_values, inputs.maps, [args.question], args.max_new_tokens)[0]
    result = {"answer": answer.text, "verdict": answer.verdict.as_dict(), **info}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"answer: {answer.text}")
    v = answer.verdict
    if v.parsed:
        where = ", ".join(v.positions) if v.positions else "-"
        print(f"verdict: {'anomalous' if v.anomalous else 'normal'} (positions: {where})")
    else:
        print(f"verdict: unparseable answer ({v.reason})")
    print(f"map: {info['map']}")
    if "expert" in info:
        e = info["expert"]
        print(f"expert: score {e['score']:.4f}, threshold {e['threshold']:.4f}, "
              f"{'NG' if e['anomalous'] else 'OK'}")
    return 0
