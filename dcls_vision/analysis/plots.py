"""The tools' figures (matplotlib, Agg backend: files only, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def flops_bars(results: list[dict[str, Any]], path: Path) -> Path:
    """Total GMACs per model (construction noted), and GMACs per part for the parts all models share."""
    names = [r["model"] for r in results]
    common = [p for p in results[0]["parts_gmacs"] if all(p in r["parts_gmacs"] for r in results)]
    fig, (ax0, ax1) = plt.subplots(
        1, 2, figsize=(min(18, 6 + 0.8 * len(results) + 0.5 * len(common)), 4.5), gridspec_kw={"width_ratios": [1, 2]}
    )
    totals = [r["gmacs"] for r in results]
    bars = ax0.bar(range(len(results)), totals, color=[f"C{i}" for i in range(len(results))])
    for bar, r in zip(bars, results):
        note = f"{r['gmacs']:.2f}"
        if r["construction"]["gflops_per_pass"]:
            note += f"\n+{1e3 * r['construction']['gflops_per_pass']:.0f} MFLOP\nbuild/pass"
        ax0.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax0.set_xticks(range(len(results)), names, rotation=30, ha="right", fontsize=8)
    ax0.set_ylabel("GMACs per image")
    ax0.set_ylim(0, max(totals) * 1.3 or 1)
    ax0.set_title(f"forward at {results[0]['input_shape'][-1]} px", fontsize=9)
    if common:
        width = 0.8 / len(results)
        x = np.arange(len(common))
        for i, r in enumerate(results):
            ax1.bar(x + i * width, [r["parts_gmacs"][p] for p in common], width, label=r["model"], color=f"C{i}")
        ax1.set_xticks(x + width * (len(results) - 1) / 2, common, rotation=30, ha="right", fontsize=8)
        ax1.legend(fontsize=7)
    else:
        ax1.text(0.5, 0.5, "no part common to all models", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_ylabel("GMACs per image")
    ax1.set_title("per part (DCLS layers counted as dense kernels of their dilated size)", fontsize=9)
    return _save(fig, path)


def throughput_lines(results: dict[str, Any], path: Path) -> Path:
    """Images/s and peak memory against the batch size, per model and mode."""
    modes = results["modes"]
    fig, axes = plt.subplots(2, len(modes), figsize=(5 * len(modes), 7), squeeze=False)
    for j, mode in enumerate(modes):
        for r in results["models"]:
            rows = [row for row in r["results"][mode] if "images_per_s" in row]
            b = [row["batch"] for row in rows]
            axes[0, j].plot(b, [row["images_per_s"] for row in rows], "o-", label=r["model"])
            if rows and "peak_mem_mb" in rows[0]:
                axes[1, j].plot(b, [row["peak_mem_mb"] for row in rows], "o-", label=r["model"])
        axes[0, j].set_title(f"{mode} ({results['device']}, {results['img_size']} px)")
        axes[0, j].set_ylabel("images / s")
        axes[1, j].set_ylabel("peak memory (MiB)")
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    return _save(fig, path)


def rf_lines(tables: list[dict[str, Any]], path: Path) -> Path:
    """Theoretical receptive field per block, one line per model, with the input size for scale."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for t in tables:
        blocks = t["blocks"]
        ax.plot([b["index"] for b in blocks], [b["rf_size"] for b in blocks], "o-", ms=3, label=t["model"])
        if t.get("effective_blocks"):
            eff = t["effective_blocks"]
            ax.plot(
                [b["index"] for b in eff],
                [b["rf_size"] for b in eff],
                "x--",
                ms=4,
                label=f"{t['model']} (effective, learned positions)",
            )
    size = tables[0]["input_shape"][-1]
    ax.axhline(size, color="grey", ls=":", label=f"input {size} px")
    names = [b["block"] for b in tables[0]["blocks"]]
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("receptive field (px)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def position_histograms(hists: list[dict[str, Any]], path: Path) -> Path:
    """One row per positions tensor (stage), one column per axis."""
    n_axes = max(len(h["axes"]) for h in hists)
    fig, axes = plt.subplots(len(hists), n_axes, figsize=(4.2 * n_axes, 2.2 * len(hists)), squeeze=False)
    axis_names = ["H (axis 0)", "W (axis 1)", "axis 2"]
    for i, h in enumerate(hists):
        for a, ax_h in enumerate(h["axes"]):
            ax = axes[i, a]
            edges = np.array(ax_h["edges"])
            ax.bar(edges[:-1], ax_h["counts"], width=np.diff(edges), align="edge", color=f"C{a}", alpha=0.8)
            ax.set_title(f"{h['label']} — {axis_names[a]}", fontsize=9)
            ax.set_xlim(edges[0], edges[-1])
        axes[i, 0].set_ylabel("elements")
    for ax in axes[-1]:
        ax.set_xlabel("position (offset from kernel centre, cells)")
    return _save(fig, path)


def delay_histograms(before: list[dict[str, Any]], after: list[dict[str, Any]], path: Path) -> Path:
    """One row per synapse layer: its delays at initialisation (left) and after training (right)."""
    fig, axes = plt.subplots(len(after), 2, figsize=(9.0, 2.2 * len(after)), squeeze=False, sharex=True)
    for i, pair in enumerate(zip(before, after)):
        for j, (h, when) in enumerate(zip(pair, ("initialisation", "after training"))):
            ax, edges = axes[i, j], np.array(h["edges"])
            ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", color=f"C{j}", alpha=0.85)
            ax.set_title(f"{h['name']} — {when} ({100 * h['near_integer']:.0f} % within 0.1 of an integer)", fontsize=8)
        axes[i, 0].set_ylabel("synapses")
    for ax in axes[-1]:
        ax.set_xlabel("delay (time steps)")
    return _save(fig, path)


def position_hist2d(hists: list[dict[str, Any]], path: Path) -> Path:
    """2-D histogram (H offset vs W offset) of each positions tensor."""
    hists = [h for h in hists if "hist2d" in h]
    cols = min(4, len(hists))
    rows = math.ceil(len(hists) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(hists) :]:
        ax.axis("off")
    for ax, h in zip(axes.flat, hists):
        e0, e1 = h["axes"][0]["edges"], h["axes"][1]["edges"]
        im = ax.imshow(np.array(h["hist2d"]), origin="upper", extent=(e1[0], e1[-1], e0[-1], e0[0]), cmap="viridis")
        ax.set_title(h["label"], fontsize=9)
        ax.set_xlabel("W offset")
        ax.set_ylabel("H offset")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def kernel_grid(kernels: list[list[dict[str, Any]]], path: Path) -> Path:
    """Constructed kernels: one row per positions tensor (its first layer), one column per channel."""
    rows, cols = len(kernels), max(len(k) for k in kernels)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for i, row in enumerate(kernels):
        for j, k in enumerate(row):
            img = k["image"].numpy()
            lim = float(np.abs(img).max()) or 1.0
            axes[i, j].imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[i, j].set_title(f"{k['layer']}\nch {k['channel']}", fontsize=6)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        for ax in axes[i, len(row) :]:
            ax.axis("off")
    return _save(fig, path)


def speed_plot(curves: dict[str, Any], path: Path) -> Path:
    """Mean |Δposition| per epoch for each positions tensor, above the learning-rate schedule."""
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    epochs = curves["epochs"]
    for name, values in curves["speed"].items():
        pts = [(e, v) for e, v in zip(epochs, values) if v is not None]
        ax0.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=curves["labels"][name])
    ax0.set_ylabel("mean |Δposition| per epoch")
    ax0.set_title("position speed")
    ax0.legend(fontsize=8)
    ax0.grid(alpha=0.3)
    lr = [(e, v) for e, v in zip(epochs, curves["lr"]) if v is not None]
    ax1.plot([p[0] for p in lr], [p[1] for p in lr], "k.-", label="lr (weights)")
    if curves.get("pos_lr_scale"):
        ax1.plot(
            [p[0] for p in lr],
            [p[1] * curves["pos_lr_scale"] for p in lr],
            "r.--",
            label=f"lr x {curves['pos_lr_scale']:g} (positions)",
        )
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("learning rate (epoch end)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    return _save(fig, path)


def erf_plot(erf: np.ndarray, title: str, path: Path) -> Path:
    """The ERF map, linear (normalised to its peak) and log10 (floored at 1e-4 of the peak)."""
    norm = erf / (erf.max() or 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    im0 = axes[0].imshow(norm, cmap="viridis")
    axes[0].set_title("ERF / max (linear)")
    fig.colorbar(im0, ax=axes[0], fraction=0.046)
    im1 = axes[1].imshow(np.log10(np.clip(norm, 1e-4, None)), cmap="viridis", vmin=-4, vmax=0)
    axes[1].set_title("log10(ERF / max)")
    fig.colorbar(im1, ax=axes[1], fraction=0.046)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def metric_vs_key(data: dict[str, Any]) -> bytes:
    """tools/report.py --plot: mean ± std of a metric against a config key (PNG bytes, written atomically by the
    caller); flat lines with a ±std band for groups without the key (a dense baseline)."""
    import io
    import textwrap

    def wrap(label: str) -> str:
        return "\n".join(textwrap.wrap(label, 70))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, s in enumerate(data["series"]):
        ax.errorbar(s["x"], s["mean"], yerr=s["std"], marker="o", capsize=3, color=f"C{i % 10}", label=wrap(s["label"]))
    colors = {s["label"]: f"C{i % 10}" for i, s in enumerate(data["series"])}
    for j, ref in enumerate(data["references"], start=len(data["series"])):
        color = colors.get(ref.get("series"), f"C{j % 10}")  # a regime's baseline in its series' colour
        ax.axhline(ref["mean"], color=color, linestyle="--", label=wrap(ref["label"]))
        if ref["std"]:
            ax.axhspan(ref["mean"] - ref["std"], ref["mean"] + ref["std"], color=color, alpha=0.15)
    if data["ticks"] is not None:
        ax.set_xticks(range(len(data["ticks"])), data["ticks"], rotation=30, ha="right")
    elif all(float(x).is_integer() for s in data["series"] for x in s["x"]):  # kernel sizes: ticks at the values
        ax.set_xticks(sorted({x for s in data["series"] for x in s["x"]}))
    ax.set_xlabel(data["key"])
    ax.set_ylabel(f"{data['metric']} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
