"""Write benchmark results: JSON (machine-readable, with environment) + markdown + CSV, atomically."""
from __future__ import annotations

import csv
import io
import platform
from pathlib import Path

import torch

from ..io_utils import atomic_write_json, atomic_write_text


def environment() -> dict:
    import deepinv

    return {"python": platform.python_version(), "torch": torch.__version__, "deepinv": deepinv.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(), "cpu_count": __import__("os").cpu_count()}


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |\n" for r in rows)


def write_results(out_dir, name: str, rows: list[dict], columns: list[str], *, title: str, notes: str = "",
                  meta: dict | None = None) -> Path:
    """Write ``name.json``, ``name.md`` and ``name.csv`` into ``out_dir``; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", {"title": title, "environment": environment(), "meta": meta or {},
                                             "rows": rows})
    md = f"# {title}\n\n{notes.strip()}\n\n" + markdown_table(rows, columns) + \
        f"\nEnvironment: `{environment()}`\n"
    atomic_write_text(out / f"{name}.md", md)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) for c in columns})
    atomic_write_text(out / f"{name}.csv", buf.getvalue())
    return out / f"{name}.md"
