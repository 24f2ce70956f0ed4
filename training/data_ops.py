"""The ``map_batches`` operators of the instruction pipeline (``training.data``).

Each is a callable class so its state (decoded foreign sources, banks, the tokenizer) is
built once per Ray actor. Batches are dicts of numpy arrays (Ray Data's "numpy" format).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from actors.modeling.grid import mask_to_positions
from actors.modeling.preprocess import decode_image, resize_map, resize_rgb, to_batch
from actors.modeling.prompt import PromptTemplate
from training.anomaly_synthesis import GENERATORS, SynthConfig
from training.data import is_anomalous

log = logging.getLogger(__name__)
IGNORE = -100


class Synthesize:
    """ids -> normal image (flipped) or one synthetic defect with mask and grid positions."""

    def __init__(self, data: dict, sources: list[dict], work_size: int) -> None:
        self.d = data
        self.sources = sources
        self.work = work_size
        self.config = SynthConfig(scratch_radius_range=tuple(data["scratch_radius"]),
                                  area_range=tuple(data["area_range"]))
        self.styles = [replace(self.config, scratch_style=s) for s in data["scratch_styles"]]
        self.by_cat: dict[str, list[int]] = {}
        for i, s in enumerate(sources):
            self.by_cat.setdefault(s["category"], []).append(i)
        self._cache: dict[int, np.ndarray] = {}

    def _image(self, i: int) -> np.ndarray:
        if i not in self._cache:
            self._cache[i] = decode_image(self.sources[i]["path"])
        return self._cache[i]

    def _source_index(self, sample_id: int) -> int:
        """Every source once per pass over ``len(sources)`` ids, in a per-pass order."""
        n = len(self.sources)
        perm = np.random.default_rng([self.d["seed"], 7, sample_id // n]).permutation(n)
        return int(perm[sample_id % n])

    def one(self, sample_id: int) -> dict:
        rng = np.random.default_rng([self.d["seed"], int(sample_id)])
        idx = self._source_index(int(sample_id))
        src = self.sources[idx]
        img = self._image(idx)
        if self.d["flip"]:
            if rng.integers(2):
                img = img[::-1]
            if rng.integers(2):
                img = img[:, ::-1]
        img = np.ascontiguousarray(img)
        kind, positions = "good", []
        if is_anomalous(int(sample_id), self.d["anomaly_ratio"]):
            kinds = self.d["kinds"]
            kind = kinds[int(rng.integers(len(kinds)))]
            kwargs = {"config": self.config}
            if kind == "scratch" and len(self.styles) > 1:
                kwargs["config"] = self.styles[int(rng.integers(len(self.styles)))]
            others = [c for c in self.by_cat if c != src["category"]]
            if kind == "cut_paste" and self.d["foreign_paste"] and others:
                other = others[int(rng.integers(len(others)))]
                pick = self.by_cat[other][int(rng.integers(len(self.by_cat[other])))]
                foreign = self._image(pick)
                if foreign.shape != img.shape:
                    from PIL import Image

                    foreign = np.asarray(Image.fromarray(foreign).resize((img.shape[1], img.shape[0])))
                kwargs["source"] = foreign
            res = GENERATORS[kind](img, rng, **kwargs)
            img, positions = res.image, mask_to_positions(res.mask)
        return {"id": int(sample_id), "category": src["category"], "fold": src["fold"],
                "kind": kind, "anomalous": bool(positions), "positions": "|".join(positions),
                "image": resize_rgb(img, self.work)}

    def __call__(self, batch: dict) -> dict:
        rows = [self.one(i) for i in batch["id"]]
        return {k: np.stack([r[k] for r in rows]) if k == "image" else np.asarray([r[k] for r in rows])
                for k in rows[0]}


class ExpertMaps:
    """Adds ``map`` (H, W) float16 in [0, 1]: the category's PatchCore map (threshold at 0.5)."""

    def __init__(self, expert: dict, weights_dir: str, banks: dict[str, str],
                 gain: tuple[float, float] = (1.0, 1.0), gain_ratio: float = 0.0, seed: int = 0,
                 gain_samples: str = "all") -> None:
        import torch

        from configs.schema import ExpertConfig

        torch.set_num_threads(1)
        self.gain, self.gain_ratio, self.seed = (float(gain[0]), float(gain[1])), float(gain_ratio), int(seed)
        self.gain_normal_only = gain_samples == "normal"
        self.cfg = ExpertConfig.model_validate(expert)
        self.weights_dir = Path(weights_dir)
        self.banks = banks
        self.experts: dict[str, tuple] = {}

    def _expert(self, key: str):
        if key not in self.experts:
            from actors.modeling.bank import open_bank

            if key not in self.banks:
                raise KeyError(f"no expert bank for {key!r} (have {sorted(self.banks)})")
            self.experts[key] = open_bank(Path(self.banks[key]), self.cfg, self.weights_dir)
        return self.experts[key]

    def sample_gain(self, sample_id: int) -> float:
        """The calibration-jitter gain of one sample (``data.map_gain``): 1.0 for the
        samples outside ``map_gain_ratio``; deterministic in (seed, sample id)."""
        lo, hi = self.gain
        if self.gain_ratio <= 0.0 or hi == 1.0 == lo:
            return 1.0
        rng = np.random.default_rng([self.seed, 0x6A1, sample_id])
        if rng.random() >= self.gain_ratio:
            return 1.0
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def __call__(self, batch: dict) -> dict:
        from actors.modeling.patchcore import lmm_map

        n, h, w = batch["image"].shape[:3]
        maps = np.zeros((n, h, w), np.float16)
        scores = np.zeros(n, np.float32)
        keys = [f"{c}|{f}" for c, f in zip(batch["category"], batch["fold"])]
        for key in sorted(set(keys)):
            rows = [i for i, k in enumerate(keys) if k == key]
            expert, meta = self._expert(key)
            mean, std = expert.mean_std
            out = expert.predict(to_batch([batch["image"][i] for i in rows], self.cfg.image_size, mean, std))
            for j, i in enumerate(rows):
                norm = lmm_map(out.anomaly_maps[j], meta.threshold, meta.normal_level)
                if "id" in batch and not (self.gain_normal_only and batch["anomalous"][i]):
                    norm = norm * self.sample_gain(int(batch["id"][i]))
                maps[i] = np.clip(resize_map(norm, h, w), 0.0, 1.0)
                scores[i] = out.scores[j] / meta.threshold
        return {**batch, "map": maps, "expert_score": scores}


def tokenize(tokenizer, template: PromptTemplate, question: str | None, answer: str
             ) -> tuple[list[int], list[int]]:
    """Question suffix + answer + eos -> (ids, labels with -100 on the prompt).

    The same token layout as ``MyriadModel.encode_text`` (tested to be equal).
    """
    suffix = tokenizer.encode(template.parts(question).suffix, add_special_tokens=False)
    ans = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    return suffix + ans, [IGNORE] * len(suffix) + ans


class TextTokens:
    """Adds ``question``, ``answer``, ``text_ids`` and ``labels`` (the shared template)."""

    def __init__(self, model: dict, tokenizer_dir: str | None) -> None:
        from actors.modeling._timm import ensure_torchvision_importable

        ensure_torchvision_importable()  # transformers imports torchvision (PLATFORM.md)
        from actors.modeling.tokenizer_tiny import AsciiTokenizer, load_tokenizer
        from configs.model_schema import ModelConfig

        cfg = ModelConfig.model_validate(model)
        self.template = PromptTemplate(cfg.prompt)
        self.tok = AsciiTokenizer() if tokenizer_dir is None else load_tokenizer(Path(tokenizer_dir))

    def __call__(self, batch: dict) -> dict:
        answers, ids, labels = [], [], []
        for pos in batch["positions"]:
            answer = self.template.answer([p for p in str(pos).split("|") if p])
            i, lab = tokenize(self.tok, self.template, None, answer)
            answers.append(answer)
            ids.append(np.asarray(i, np.int64))
            labels.append(np.asarray(lab, np.int64))
        n = len(answers)
        obj = np.empty(n, dtype=object)
        lab_obj = np.empty(n, dtype=object)
        for k in range(n):
            obj[k], lab_obj[k] = ids[k], labels[k]
        return {**batch, "question": np.asarray([""] * n), "answer": np.asarray(answers),
                "text_ids": obj, "labels": lab_obj}


def collate(batch: dict, pad_id: int):
    """Numpy batch -> torch tensors: images/maps kept as arrays for the ViT preprocessor,
    text right-padded as ``MyriadModel.encode_text`` pads it."""
    import torch

    seqs = list(batch["text_ids"])
    labs = list(batch["labels"])
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    labels = torch.full((len(seqs), t), IGNORE, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs)):  # np.array copies Ray Data's read-only rows
        ids[i, : len(s)] = torch.from_numpy(np.array(s, np.int64))
        mask[i, : len(s)] = 1
        labels[i, : len(s)] = torch.from_numpy(np.array(lab, np.int64))
    return ids, mask, labels
