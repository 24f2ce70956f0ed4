"""A self-contained HTML report: metrics tables and anomaly-map overlays (base64 PNGs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from actors.modeling.overlay import side_by_side, to_png


def png_tag(rgb: np.ndarray, width: int = 384) -> str:
    data = base64.b64encode(to_png(rgb)).decode()
    return f'<img src="data:image/png;base64,{data}" width="{width}">'


def write_report(path: Path, title: str, sections: list[dict]) -> Path:
    """sections: [{"title", "metrics": {k: v}, "figures": [(caption, rgb, norm_map)]}]."""
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}figure{display:inline-block;margin:6px}"
        "figcaption{font-size:12px;max-width:384px}</style>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec['title'])}</h2>")
        metrics = sec.get("metrics") or {}
        if metrics:
            rows = "".join(
                f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in metrics.items()
            )
            parts.append(f"<table>{rows}</table>")
        for caption, rgb, norm in sec.get("figures", []):
            parts.append(
                f"<figure>{png_tag(side_by_side(rgb, norm))}"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))
