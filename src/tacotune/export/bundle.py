"""The export directory's manifest: what is in it, with checksums, checked before use.

    DIR/manifest.json  {"format", "format_version", "tacotune", "source", "created",
                        "files": {name: {"sha256", "bytes"}}, "model": {...}, "vocoder": {...}}

`read_manifest` refuses a manifest that is not what the exporter wrote (a wrong type, a
missing key, a file name that leads outside DIR, a file whose size or sha256 differs);
`check_graph` refuses a graph whose inputs and outputs are not the ones the runtime feeds
and reads (names, element types, ranks, the mel bands and reduction factor). Both raise
one ExportError naming the file. Torch-free, like the runtime that reads it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from tacotune.errors import TacotuneError, short_repr

FORMAT = "tacotune-onnx"
FORMAT_VERSION = 1  # bump when the graphs' inputs/outputs or the layout change incompatibly
MANIFEST = "manifest.json"
ENCODER, DECODER_STEP, POSTNET, VOCODER = (
    "encoder.onnx",
    "decoder_step.onnx",
    "postnet.onnx",
    "vocoder.onnx",
)
FRONTEND, CONFIG, README = "frontend.json", "config.yaml", "README.md"
CARRIED_PREFIX = "next_"  # decoder_step.onnx: output `next_NAME` is the next step's input NAME
REQUIRED = (ENCODER, DECODER_STEP, POSTNET, FRONTEND, CONFIG)  # vocoder.onnx only with one
_HOW_TO_FIX = "export the voice again with `tacotune export VOICE --format onnx -o DIR`"
FLOAT, BOOL, INT64 = "tensor(float)", "tensor(bool)", "tensor(int64)"
BATCH, TEXT = "batch", "text_length"  # the symbolic dimensions the runtime sizes itself


class ExportError(TacotuneError):
    """A voice cannot be exported, or an export directory cannot be used."""


def sha256(path: Path) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, files: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """Write DIR/manifest.json listing `files` (in DIR) with checksums, plus `info`."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **info,
        "files": {
            name: {"sha256": sha256(directory / name), "bytes": (directory / name).stat().st_size}
            for name in files
        },
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    (directory / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an export directory, after checking every listed file's checksum."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ExportError(f"ONNX export directory {directory} does not exist; {_HOW_TO_FIX}")
    if not path.is_file():
        raise ExportError(
            f"{directory} has no {MANIFEST}, so it is not a complete tacotune ONNX export; "
            f"{_HOW_TO_FIX}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not UTF-8 JSON
        raise ExportError(f"{path} cannot be read ({error}); {_HOW_TO_FIX}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is not a {FORMAT} manifest; {_HOW_TO_FIX}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{directory} has export format {manifest.get('format_version')}, this tacotune "
            f"reads format {FORMAT_VERSION}; {_HOW_TO_FIX} with this tacotune"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in files.values()
    ):
        raise ExportError(f"{path} lacks a sha256 for every file; {_HOW_TO_FIX}")
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise ExportError(f"{path} does not list {', '.join(missing)}; {_HOW_TO_FIX}")
    problem = _info_problem(manifest)
    if problem:
        raise ExportError(f"{path} is damaged: {problem}; {_HOW_TO_FIX}")
    for name, entry in files.items():
        _check_file(_inside(directory, name), entry)
    return manifest


# manifest key -> (its test, what it must be); what the runtime reads besides "files"
_INFO: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.reduction_factor": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.n_mels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.prenet_dropout": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "sample_rate": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "vocoder.kind": (lambda v: v in ("onnx", "griffin-lim"), "'onnx' or 'griffin-lim'"),
}
_GRIFFIN_LIM = {
    "vocoder.momentum": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "vocoder.log_clamp": (lambda v: _is_real(v) and v > 0, "a number > 0"),
}


def _info_problem(manifest: dict[str, Any]) -> str:
    """What in the manifest's "model", "vocoder" and "sample_rate" the runtime cannot use."""
    for section in ("model", "vocoder"):
        if not isinstance(manifest.get(section), dict):
            return f"{section} is {short_repr(manifest.get(section))}, expected an object"
    checks = dict(_INFO)
    if manifest["vocoder"].get("kind") == "griffin-lim":
        checks.update(_GRIFFIN_LIM)
    for key, (test, expected) in checks.items():
        section, _, name = key.rpartition(".")
        value = (manifest[section] if section else manifest).get(name)
        if not test(value):
            return f"{key} is {short_repr(value)}, expected {expected}"
    has_graph = VOCODER in manifest["files"]
    if has_graph != (manifest["vocoder"]["kind"] == "onnx"):
        listed = "lists" if has_graph else "does not list"
        return f"vocoder.kind is {manifest['vocoder']['kind']!r}, but it {listed} {VOCODER}"
    return ""


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_real(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _inside(directory: Path, name: str) -> Path:
    """`directory / name` for a file the manifest lists: a plain file name, whose file
    (links followed) is in `directory` itself; ExportError for anything else (an absolute
    path, `..`, a subdirectory, a link that leads out)."""
    plain = name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
    path = directory / name
    if not plain:
        raise ExportError(
            f"{directory / MANIFEST} lists {short_repr(name)}, which is no file name in the "
            f"export directory; {_HOW_TO_FIX}"
        )
    if path.resolve().parent != directory.resolve():
        raise ExportError(
            f"{path} leads outside the export directory (to {path.resolve()}); an export "
            f"holds its files itself; {_HOW_TO_FIX}"
        )
    return path


def _check_file(path: Path, entry: dict[str, Any]) -> None:
    expected = entry["sha256"]
    if not path.is_file():
        raise ExportError(f"{path} is missing from the export; {_HOW_TO_FIX}")
    size = path.stat().st_size
    if entry.get("bytes") != size:
        raise ExportError(
            f"{path} has {size} bytes, the manifest records {short_repr(entry.get('bytes'))}: "
            f"the file was changed or damaged after export; {_HOW_TO_FIX}"
        )
    found = sha256(path)
    if found != expected:
        raise ExportError(
            f"{path} does not match the manifest's checksum (expected sha256 {expected[:16]}..., "
            f"found {found[:16]}...): the file was changed or damaged after export; {_HOW_TO_FIX}"
        )


class Declared(Protocol):
    """A graph input or output as onnxruntime declares it (`session.get_inputs()`)."""

    name: str
    type: str  # e.g. "tensor(float)"
    shape: Sequence[int | str | None]  # a size, a symbolic dimension's name or unknown


ANY, FIXED = "any", "fixed"  # expected dimensions besides a size: any at all, any size
Spec = tuple[str, str, tuple[int | str, ...]]  # name, type, dimensions


def graph_specs(n_mels: int) -> dict[str, tuple[list[Spec], list[Spec]]]:
    """The inputs and outputs, in order, of every graph but decoder_step.onnx."""
    mel: Spec = ("mel", FLOAT, (ANY, n_mels, ANY))
    encoder_in: list[Spec] = [("text", INT64, (ANY, ANY)), ("text_lengths", INT64, (ANY,))]
    encoder_out: list[Spec] = [
        ("memory", FLOAT, (ANY, ANY, ANY)),
        ("processed_memory", FLOAT, (ANY, ANY, ANY)),
        ("memory_mask", BOOL, (ANY, ANY)),
    ]
    return {
        ENCODER: (encoder_in, encoder_out),
        POSTNET: ([mel], [("mel_postnet", FLOAT, (ANY, n_mels, ANY))]),
        VOCODER: ([mel], [("audio", FLOAT, (ANY, ANY))]),
    }


# decoder_step.onnx's stopping counters the runtime reads; carried, like the decoder state
STOPPING_READ = ("done", "by_gate", "at_end", "steps")
PRENET_MASKS: Spec = ("prenet_masks", FLOAT, (FIXED, ANY, FIXED))  # absent without dropout


def step_specs(n_mels: int, reduction_factor: int) -> tuple[list[Spec], list[Spec]]:
    """decoder_step.onnx's inputs and outputs besides the decoder state it carries."""
    inputs: list[Spec] = [
        ("frame", FLOAT, (ANY, n_mels)),
        ("memory", FLOAT, (ANY, ANY, ANY)),
        ("processed_memory", FLOAT, (ANY, ANY, ANY)),
        ("memory_mask", BOOL, (ANY, ANY)),
        ("text_lengths", INT64, (ANY,)),
        *((name, BOOL, (ANY,)) for name in STOPPING_READ[:3]),
        (STOPPING_READ[3], INT64, (ANY,)),
    ]
    outputs: list[Spec] = [
        ("frames", FLOAT, (ANY, reduction_factor, n_mels)),
        ("gate", FLOAT, (ANY,)),
        ("attention", FLOAT, (ANY, ANY)),
    ]
    return inputs, outputs


def check_graph(
    path: Path, inputs: Sequence[Declared], outputs: Sequence[Declared], model: dict[str, Any]
) -> None:
    """ExportError unless the graph at `path` has the inputs and outputs the runtime uses
    with a voice of `model` (the manifest's "model": its mel bands and reduction factor)."""
    n_mels, r = model["n_mels"], model["reduction_factor"]
    if path.name == DECODER_STEP:
        problem = _step_problem(inputs, outputs, *step_specs(n_mels, r))
    else:
        expected_in, expected_out = graph_specs(n_mels)[path.name]
        problem = _list_problem("inputs", inputs, expected_in) or _list_problem(
            "outputs", outputs, expected_out
        )
    if problem:
        raise ExportError(
            f"{path} is not the {path.stem} graph of this voice ({n_mels} mel bands, "
            f"{r} frames per step): {problem}; {_HOW_TO_FIX}"
        )


def _list_problem(kind: str, found: Sequence[Declared], expected: Sequence[Spec]) -> str:
    names = [d.name for d in found]
    if names != [name for name, _, _ in expected]:
        return f"its {kind} are {names}, expected {[name for name, _, _ in expected]}"
    for declared, spec in zip(found, expected, strict=True):
        problem = _tensor_problem(declared, spec)
        if problem:
            return problem
    return ""


def _step_problem(
    inputs: Sequence[Declared],
    outputs: Sequence[Declared],
    fixed_in: list[Spec],
    fixed_out: list[Spec],
) -> str:
    """decoder_step.onnx: the inputs and outputs of `step_specs`, PRENET_MASKS if any, and
    for every input NAME the runtime does not feed itself (the state it carries from step
    to step, starting at zero) an output `next_NAME` declared alike, its sizes fixed or
    batch/text_length."""
    ins, outs = {d.name: d for d in inputs}, {d.name: d for d in outputs}
    masks = [PRENET_MASKS] if PRENET_MASKS[0] in ins else []
    for kind, found, specs in (("input", ins, [*fixed_in, *masks]), ("output", outs, fixed_out)):
        for spec in specs:
            declared = found.get(spec[0])
            problem = _tensor_problem(declared, spec) if declared else f"no {kind} {spec[0]!r}"
            if problem:
                return problem
    fed = {spec[0] for spec in [*fixed_in, *masks]} - set(STOPPING_READ)
    carried = [d for name, d in ins.items() if name not in fed]
    for state in carried:
        after = outs.get(CARRIED_PREFIX + state.name)
        if after is None or (after.type, list(after.shape)) != (state.type, list(state.shape)):
            return f"input {state.name!r} has no output {CARRIED_PREFIX}{state.name} like it"
        if state.type not in (FLOAT, BOOL, INT64) or not all(
            isinstance(d, int) or d in (BATCH, TEXT) for d in state.shape
        ):
            return f"carried input {state.name!r} is {_show(state.type, state.shape)}"
    known = {spec[0] for spec in fixed_out} | {CARRIED_PREFIX + d.name for d in carried}
    extra = sorted(set(outs) - known)
    return f"unexpected outputs {extra}" if extra else ""


def _tensor_problem(found: Declared, spec: Spec) -> str:
    name, dtype, dims = spec
    shape = list(found.shape)
    fits = found.type == dtype and len(shape) == len(dims)
    fits = fits and all(
        want == ANY or (want == FIXED and isinstance(got, int)) or got == want
        for got, want in zip(shape, dims, strict=False)
    )
    if fits:
        return ""
    return f"{name!r} is {_show(found.type, shape)}, expected {_show(dtype, dims)}"


def _show(dtype: str, dims: Sequence[object]) -> str:
    return f"{dtype} ({', '.join('?' if d in (ANY, None) else str(d) for d in dims)})"
