"""`small` with the real packaged weights (integration): conversions and the assembled model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.modeling._timm import ensure_torchvision_importable
from configs import load_config

ensure_torchvision_importable()  # transformers' model modules import torchvision
pytestmark = pytest.mark.integration
torch.set_num_threads(1)
LMM_WEIGHTS = ["dinov2_vits14", "minilm_l6", "smollm2_135m_instruct"]


@pytest.fixture(scope="session")
def small_cfg():
    return load_config("small")


@pytest.fixture(scope="session")
def small_weights(small_cfg):
    """Prepare the LMM weights once (idempotent: a no-op when already prepared)."""
    from actors.modeling.weights import prepare

    prepare(small_cfg.paths.weights_dir, names=LMM_WEIGHTS)
    return small_cfg.paths.weights_dir


def test_prepare_is_idempotent(small_weights):
    from actors.modeling.weights import prepare

    assert prepare(small_weights, names=LMM_WEIGHTS) == {n: 0.0 for n in LMM_WEIGHTS}


def _onnx_backbone(onnx_model, output: str):
    """The ONNX graph cut at the backbone's output (the decoder head is dropped)."""
    import onnx

    g = onnx_model.graph
    needed, keep = {output}, []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    used = {i for n in keep for i in n.input}
    graph = onnx.helper.make_graph(
        keep, "dinov2_backbone", list(g.input),
        [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        [i for i in g.initializer if i.name in used],
    )
    return onnx.helper.make_model(graph, opset_imports=onnx_model.opset_import)


def test_dinov2_conversion_matches_the_onnx_graph(small_weights):
    """onnxruntime is not installed: onnx's pure reference evaluator runs the original graph."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    from transformers import Dinov2Model

    from actors.modeling.weights import weights_path
    from actors.modeling.weights_lmm import DINOV2_ONNX_OUTPUT, dinov2_onnx_path

    sub = _onnx_backbone(onnx.load(str(dinov2_onnx_path())), DINOV2_ONNX_OUTPUT)
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    (expected,) = ReferenceEvaluator(sub).run(None, {"input_image": x})
    hf = Dinov2Model.from_pretrained(weights_path(small_weights, "dinov2_vits14")).eval()
    with torch.no_grad():
        got = hf(torch.from_numpy(x)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (1, 257, 384)
    assert float(np.abs(got - expected).max()) < 1e-4


def test_smollm2_still_answers_a_plain_chat_question(small_weights):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from actors.modeling.weights import weights_path

    d = weights_path(small_weights, "smollm2_135m_instruct")
    tok = AutoTokenizer.from_pretrained(d)
    llm = LlamaForCausalLM.from_pretrained(d).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = llm.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_small_myriad_loads_pretrained_parts_and_trains_the_configured_ones(small_cfg, small_weights):
    from safetensors.torch import load_file

    from actors.modeling.myriad import assert_trainable, build_myriad
    from actors.modeling.weights import weights_path

    model = build_myriad(small_cfg.model, small_weights)
    assert_trainable(model, small_cfg.model.trainable)
    minilm = load_file(str(weights_path(small_weights, "minilm_l6") / "model.safetensors"))
    assert torch.equal(model.qformer.layer[1].attention.self.query.weight,
                       minilm["encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(model.qformer.layer[3].output.dense.weight, minilm["encoder.layer.3.output.dense.weight"])
    x = torch.randn(1, 3, 224, 224)
    m = torch.rand(1, 1, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.vision(x, m), model.vision.pretrained_forward(x))
    batch = model.encode_text([None], ["Yes, there exists anomalies in the image, at the center of the image."])
    out = model(x, m, batch.text_ids, batch.text_mask, labels=batch.labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm.parameters())
    answer = model.eval().generate(x, m, ["What is in this image?"], max_new_tokens=8)[0]
    assert 0 < answer.new_tokens <= 8 and answer.text
