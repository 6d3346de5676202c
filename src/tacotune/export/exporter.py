"""`tacotune export VOICE --format onnx -o DIR`: a voice as ONNX graphs, with what runs them.

    DIR/encoder.onnx, decoder_step.onnx, postnet.onnx   the model (see graphs.py)
    DIR/vocoder.onnx    only for a voice exported with a neural vocoder (--vocoder, or the
                        vocoder.pt of a registry version)
    DIR/frontend.json   the text frontend's state (TextFrontend.state())
    DIR/config.yaml     the resolved config of the checkpoint
    DIR/README.md       how to use the directory
    DIR/manifest.json   every file above with its sha256, and the runtime's parameters

The directory is built next to DIR and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tacotune.audio import GRIFFIN_LIM_MOMENTUM, LOG_CLAMP
from tacotune.card import CardFacts, RunFacts, model_card, payload_facts, run_facts
from tacotune.checkpoint import best_in_run, code_version, load_checkpoint
from tacotune.config.load import save_config
from tacotune.config.schema import Config
from tacotune.export.bundle import CONFIG, FRONTEND, README, ExportError, write_manifest
from tacotune.export.graphs import OPSET, export_graphs
from tacotune.export.readme import export_readme
from tacotune.extras import require
from tacotune.files import full_disk_is_an_error
from tacotune.model.tacotron2 import Tacotron2
from tacotune.outputs import Kind, check_output
from tacotune.registry import Registry
from tacotune.synthesize import load_voice
from tacotune.vocoder.neural import load_generator

log = logging.getLogger(__name__)

NEEDED = ("config", "text_frontend", "n_symbols", "model")  # checkpoint keys synthesis reads


def export_voice(
    voice: str | Path,
    output: str | Path,
    registry_root: str | Path | None = None,
    vocoder: nn.Module | str | Path | None = None,
) -> Path:
    """Export `voice` (a .pt checkpoint, a run directory or a registry reference such as
    ``name:production``) to the directory `output`, which must not exist or be empty.

    `vocoder`: a neural vocoder exported as vocoder.onnx: a module, (B, n_mels, T) log-mel
    -> the samples of each item (e.g. HiFi-GAN's (B, 1, T * hop)), or a vocoder checkpoint
    or run directory (its HiFi-GAN generator, weight norm folded, checked against the
    voice's audio settings). None: a registry version's own vocoder.pt if it has one, else
    the runtime uses Griffin-Lim.
    """
    require("onnx", "export", "exporting to ONNX")  # torch.onnx.export writes with it
    output = check_output(output, Kind.EXPORT)  # new or empty; a link's target (outputs.py)
    checkpoint, source, registered_vocoder, facts = resolve_voice(voice, registry_root)
    payload = load_checkpoint(checkpoint)
    missing = [key for key in NEEDED if key not in payload]
    if missing:
        raise ExportError(
            f"checkpoint {checkpoint} lacks {', '.join(missing)}, so it cannot be exported; "
            "give a checkpoint saved by `tacotune train`"
        )
    loaded = load_voice(payload, str(checkpoint))  # config bounds, weights that fit it
    config, model = loaded.config, loaded.model
    vocoder = vocoder if vocoder is not None else registered_vocoder
    if isinstance(vocoder, str | Path):  # the HiFi-GAN generator, in its 1-D layout
        vocoder = load_generator(vocoder, expected_audio=config.audio)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        with full_disk_is_an_error(output, _weight_bytes(model, vocoder)):
            card = _card(output.name, payload, facts, vocoder is not None)
            files = _write_bundle(
                staging, output.name, config, model, vocoder, payload, source, card
            )
        if output.exists():
            output.rmdir()  # empty, checked above
        os.rename(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; else clean up
    log.info("exported %s to %s (%s)", source, output, ", ".join(files))
    return output


def _write_bundle(
    staging: Path,
    name: str,
    config: Config,
    model: Tacotron2,
    vocoder: nn.Module | None,
    payload: dict[str, Any],
    source: str,
    card: str,
) -> list[str]:
    """Every file of the bundle into `staging` (to be renamed to `name`); returns the graphs.
    README.md is the voice's model card, then how to use the graphs."""
    files = export_graphs(model, staging, vocoder)
    frontend = json.dumps(payload["text_frontend"], ensure_ascii=False, indent=1)
    (staging / FRONTEND).write_text(frontend + "\n", encoding="utf-8")
    save_config(config, staging / CONFIG)
    info = _info(config, model, source, payload, vocoder is not None)
    (staging / README).write_text(card + "\n" + export_readme(info, name), encoding="utf-8")
    write_manifest(staging, [*files, FRONTEND, CONFIG, README], info)
    return files


def _weight_bytes(*modules: nn.Module | None) -> int:
    """The size of the modules' weights as float32: about what their graphs take on disk."""
    return sum(4 * p.numel() for m in modules if m is not None for p in m.parameters())


def resolve_voice(
    voice: str | Path, registry_root: str | Path | None
) -> tuple[Path, str, Path | None, RunFacts]:
    """The checkpoint of `voice`; where it came from, without a path of this machine (a
    run's or file's name, a registry reference); the vocoder checkpoint registered with it
    (None: none, or not a registry reference); what its run or version says of it."""
    path = Path(voice)
    if path.exists():
        run = path if path.is_dir() else path.parent.parent  # RUN/checkpoints/best.pt
        facts = run_facts(run) if (run / "events.jsonl").is_file() else RunFacts()
        return best_in_run(path), path.resolve().name, None, facts
    if path.suffix == ".pt" or os.sep in str(voice):
        raise ExportError(
            f"voice {voice} does not exist; give a .pt checkpoint, a run directory or a "
            "registry reference (NAME[:VERSION|:STAGE])"
        )
    registry = Registry(registry_root)
    version = registry.get(str(voice))
    facts = RunFacts(
        version.steps, version.score, dict(version.metrics), data_hours=version.data_hours
    )
    return version.checkpoint, f"registry {version.ref}", version.vocoder(), facts


def _card(name: str, payload: dict[str, Any], facts: RunFacts, neural: bool) -> str:
    """The model card of an export (tacotune/card.py); its commands run beside it."""
    known = {**payload_facts(payload), "data_hours": facts.data_hours}
    card = CardFacts(
        title=name,
        **{**known, "steps": facts.step if facts.step is not None else known["steps"]},
        score=facts.score,
        metrics=facts.metrics,
        vocoder="HiFi-GAN (vocoder.onnx)" if neural else "Griffin-Lim",
        usage=[
            f"tacotune serve {shlex.quote(name)}   # OpenAI-style HTTP API, from the folder above"
        ],
    )
    return model_card(card)


def _info(
    config: Config, model: Tacotron2, source: str, payload: dict[str, Any], has_vocoder: bool
) -> dict[str, Any]:
    """The manifest's description of the export; the runtime reads "model" and "vocoder"."""
    m = config.model
    return {
        "tacotune": code_version(),
        "exporter": f"torch {torch.__version__} torch.onnx (TorchScript-based), opset {OPSET}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "checkpoint_code_version": str(payload.get("code_version", "unknown")),
        "model": {  # the stopping values are compiled into decoder_step.onnx; listed to read
            "reduction_factor": model.final_reduction_factor,
            "n_mels": config.audio.n_mels,
            "prenet_dropout": m.prenet_dropout,
            "max_decoder_steps": m.max_decoder_steps,
            "max_frames_per_char": m.max_frames_per_char,
            "gate_threshold": m.gate_threshold,
            "end_hold_frames": m.end_hold_frames,
        },
        "vocoder": (
            {"kind": "onnx"}
            if has_vocoder
            else {"kind": "griffin-lim", "momentum": GRIFFIN_LIM_MOMENTUM, "log_clamp": LOG_CLAMP}
        ),
        "sample_rate": config.audio.sample_rate,
        "stress": str(payload["text_frontend"]["stress"]),
    }
