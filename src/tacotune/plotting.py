"""Figures a person checks: attention alignment, mel spectrograms, stop-token curve."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor


def alignment_figure(alignment: Tensor, title: str = "") -> Figure:
    """(S, N) attention -> figure with decoder steps on x and characters on y."""
    fig, ax = plt.subplots(figsize=(6, 4))
    image = ax.imshow(
        alignment.detach().float().cpu().T.numpy(),
        aspect="auto",
        origin="lower",
        interpolation="none",
        vmin=0.0,
        vmax=1.0,
    )
    fig.colorbar(image, ax=ax)
    ax.set_xlabel("decoder step")
    ax.set_ylabel("character")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def mel_figure(mel: Tensor, title: str = "") -> Figure:
    """(n_mels, T) log-mel."""
    fig, ax = plt.subplots(figsize=(8, 2.5))
    data = mel.detach().float().cpu().numpy()
    ax.imshow(data, aspect="auto", origin="lower", interpolation="none")
    ax.set_ylabel("predicted mel")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def mels_figure(panels: Mapping[str, Tensor], title: str = "") -> Figure:
    """(n_mels, T) log-mels stacked under each other with a shared color scale, each
    labelled with its key (e.g. the recording, a vocoder's output and Griffin-Lim's)."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.8 * len(panels) + 0.4), squeeze=False)
    data = {name: mel.detach().float().cpu().numpy() for name, mel in panels.items()}
    low = min(float(d.min()) for d in data.values())
    high = max(float(d.max()) for d in data.values())
    for ax, (name, values) in zip(axes[:, 0], data.items(), strict=True):
        ax.imshow(values, aspect="auto", origin="lower", interpolation="none", vmin=low, vmax=high)
        ax.set_ylabel(name, fontsize=8)
    axes[0, 0].set_title(title, fontsize=9)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    return fig


def gate_figure(gate_logits: Tensor, threshold: float, title: str = "") -> Figure:
    """(S,) stop logits as probabilities with the stop threshold."""
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.plot(gate_logits.detach().float().sigmoid().cpu().numpy(), label="stop probability")
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("decoder step")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path, close: bool = True) -> None:
    """Write a PNG and free the figure (unless `close` is False: then `close_figure` it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    if close:
        plt.close(fig)


def close_figure(fig: Figure) -> None:
    """Free a figure's memory."""
    plt.close(fig)
