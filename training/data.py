"""Ray Data instruction samples for Myriad (issue 4; DESIGN.md 6).

    sample ids ──► synthesize (decode, flip, defect + mask + grid positions, resize)
               ──► expert maps (PatchCore of the image's category, a bank fit without it)
               ──► text (shared prompt template -> token ids + label mask)

A sample is a pure function of ``(data.seed, id)``: the normal source image, whether it
gets a defect (exactly ``anomaly_ratio`` of every run of ids), the defect and the flips all
come from it. Each training rank reads its own id stream ``rank, rank + W, ...`` starting at
``start``, so a run is deterministic and a resumed run continues where the checkpoint left.

Normal sources are ``<root>/<category>/train/good`` images (MVTec layout) and/or Parquet
manifests with ``path`` and ``category`` columns. Test images are never read here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actors.modeling.errors import DatasetError
from training.mvtec import IMAGE_SUFFIXES, open_category

log = logging.getLogger(__name__)

EVAL_ID_OFFSET = 1_000_000_000  # eval ids never collide with training ids


@dataclass(frozen=True)
class Source:
    path: str
    category: str
    fold: int  # which cross-fitted bank scores it (the bank fit without this image)


def list_sources(root: Path | None, categories: tuple[str, ...], manifests: tuple[Path, ...],
                 folds: int) -> list[Source]:
    """Normal images (sorted, de-duplicated) with their category and expert fold."""
    rows: list[tuple[str, str]] = []
    if root is not None:
        for c in categories:
            rows += [(str(p), c) for p in open_category(Path(root), c).train_good()]
    for m in manifests:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(m, columns=["path", "category"])
        except Exception as exc:  # pyarrow raises several error types
            raise DatasetError(f"{m}: not a manifest with path and category columns ({exc})") from None
        for p, c in zip(table.column("path").to_pylist(), table.column("category").to_pylist()):
            path = Path(p) if Path(p).is_absolute() else Path(m).parent / p
            if c in categories and path.suffix.lower() in IMAGE_SUFFIXES:
                rows.append((str(path.resolve()), c))
    rows = sorted(set(rows))
    if not rows:
        raise DatasetError(f"no normal training images for categories {list(categories)} "
                           f"(root {root}, manifests {list(manifests)})")
    out, seen = [], {}
    for path, c in rows:
        i = seen.get(c, 0)
        seen[c] = i + 1
        out.append(Source(path, c, i % folds))
    return out


def is_anomalous(sample_id: int, ratio: float) -> bool:
    """Exactly ``ratio`` of every run of consecutive ids (a Bresenham pattern)."""
    return int(np.floor((sample_id + 1) * ratio)) - int(np.floor(sample_id * ratio)) == 1


def rank_ids(start: int, count: int, rank: int, world: int) -> np.ndarray:
    """Global sample ids of ``rank``: the ``count`` ids ``start + rank + k * world``."""
    return start + rank + world * np.arange(count, dtype=np.int64)


def build_dataset(cfg, sources: list[Source], banks: dict[tuple[str, int], str], ids: np.ndarray,
                  tokenizer_dir: str | None):
    """A Ray Dataset of instruction samples for the given global ``ids`` (order kept)."""
    import ray

    from training.data_ops import ExpertMaps, Synthesize, TextTokens

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    d = cfg.train.data
    work = max(cfg.model.vision.image_size, cfg.expert.image_size)
    blocks = max(1, min(len(ids) // max(1, d.expert_batch_size), 64))
    ds = ray.data.from_items([{"id": int(i)} for i in ids], override_num_blocks=blocks)
    ds = ds.map_batches(
        Synthesize, fn_constructor_args=(d.model_dump(mode="json"), [s.__dict__ for s in sources], work),
        batch_size=d.expert_batch_size, num_cpus=d.synth_cpus, compute=ray.data.ActorPoolStrategy(size=1),
    )
    ds = ds.map_batches(
        ExpertMaps, fn_constructor_args=(cfg.expert.model_dump(mode="json"), str(cfg.paths.weights_dir),
                                         {f"{c}|{f}": b for (c, f), b in banks.items()},
                                         d.map_gain, d.map_gain_ratio, d.seed, d.map_gain_samples),
        batch_size=d.expert_batch_size, num_cpus=d.expert_cpus,
        compute=ray.data.ActorPoolStrategy(size=d.expert_concurrency),
    )
    ds = ds.map_batches(
        TextTokens, fn_constructor_args=(cfg.model.model_dump(mode="json"), tokenizer_dir),
        batch_size=d.expert_batch_size, num_cpus=0.05, compute=ray.data.ActorPoolStrategy(size=1),
    )
    return ds


def tokenizer_dir(cfg) -> str | None:
    """Directory of the LLM's tokenizer (None for the built-in ASCII tokenizer)."""
    from configs.model_schema import TokenizerKind

    if cfg.model.llm.tokenizer == TokenizerKind.ascii:
        return None
    from actors.modeling.hf_dirs import resolve_weights_dir

    return str(resolve_weights_dir(cfg.model.llm.weights, cfg.paths.weights_dir))


def prepare(cfg, *, progress: bool = False):
    """Sources and their cross-fitted banks for a root config with ``model`` and ``train``."""
    from configs.train_schema import banks_dir, data_root
    from training.expert_banks import fit_fold_banks

    d = cfg.train.data
    root = data_root(cfg) if d.root is not None or not d.manifests else None
    sources = list_sources(root, d.categories, tuple(Path(m) for m in d.manifests), d.expert_folds)
    banks = fit_fold_banks(cfg, sources, banks_dir(cfg), progress=progress)
    return sources, banks


def write_instructions(cfg, out: Path, samples: int, start: int = 0, progress: bool = False) -> dict:
    """``myriad data instructions``: ``samples`` rows (ids ``start`` ...) as Parquet under ``out``.

    Columns: id, category, kind, anomalous, positions, question, answer, image (H, W, 3),
    map (H, W) float16, text_ids, labels (-100 on the prompt). Ray must be initialised.
    """
    sources, banks = prepare(cfg, progress=progress)
    ids = rank_ids(start, samples, 0, 1)
    ds = build_dataset(cfg, sources, banks, ids, tokenizer_dir(cfg))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds.write_parquet(str(out))
    files = sorted(out.glob("*.parquet"))
    return {"out": str(out), "rows": samples, "files": len(files), "sources": len(sources),
            "banks": {f"{c}/fold{f}": b for (c, f), b in banks.items()}}
