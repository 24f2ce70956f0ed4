"""Export: the model directory that ``myriad ask --model`` and serving load.

Written atomically (``<dir>.partial`` then renamed) so a reader never sees half a model;
``train_summary.json`` beside it records the step, the last metrics and the world size.
Only safetensors and JSON (``actors.modeling.checkpoint.save_model_dir``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from actors.modeling.checkpoint import save_model_dir

log = logging.getLogger(__name__)
SUMMARY_FILE = "train_summary.json"


def standalone_copy(model):
    """A fresh model holding copies of ``model``'s weights (DeepSpeed's ZeRO views share one
    flat buffer, which safetensors rightly refuses to save)."""
    from actors.modeling.myriad import build_myriad

    state = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
             for k, v in model.state_dict().items()}
    fresh = build_myriad(model.config, pretrained=False, tokenizer=model.tokenizer)
    fresh.load_state_dict(state, strict=True)
    return fresh


def export_model(model, out: Path, summary: dict) -> Path:
    out = Path(out)
    model = standalone_copy(model)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_dir(model, tmp)
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("exported the model to %s", out)
    return out
