"""A text with its boundaries: each group of characters on its own shade, the boundary char marked."""

from __future__ import annotations

from pathlib import Path

from dynacomp.io import figure


def plot_boundaries(text: str, boundaries: list[int], path: str | Path, title: str = "",
                    width: int = 80) -> Path:
    """Draw ``text`` in rows of ``width`` characters; groups alternate between two shades and a bar
    follows each character with boundary 1 (it closes its group). Writes ``path`` (png, svg, pdf)."""
    if len(boundaries) != len(text):
        raise ValueError(f"{len(boundaries)} boundaries for {len(text)} characters")
    rows = (len(text) + width - 1) // width
    with figure(path, dpi=150, figsize=(width * 0.13 + 0.4, rows * 0.32 + 0.6)) as (_, ax):
        from matplotlib.patches import Rectangle
        group = 0
        for i, (char, b) in enumerate(zip(text, boundaries)):
            x, y = i % width, -(i // width)
            ax.add_patch(Rectangle((x, y - 0.4), 1, 0.8, color=("#cfe3f5", "#f8dcc0")[group % 2], lw=0))
            ax.text(x + 0.5, y, "·" if char == " " else char, ha="center", va="center", family="monospace", fontsize=8)
            if b:
                ax.plot([x + 1, x + 1], [y - 0.45, y + 0.45], color="#c0392b", lw=1.2)
                group += 1
        ax.set_xlim(0, width)
        ax.set_ylim(-rows + 0.5, 0.5)
        ax.axis("off")
        shown = sum(boundaries)
        ax.set_title(f"{title}  ({shown} boundaries, {len(text) / max(shown, 1):.2f} characters per group)".strip(),
                     fontsize=9, loc="left")
    return Path(path)
