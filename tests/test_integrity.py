"""Integrity of what a voice is loaded from: registry versions (every file checked by every
verb, meta.json, names, a vocoder offered as a voice) and ONNX export bundles (manifests,
the files they name, frontend files and the graphs' inputs and outputs). Untrained tiny
models: nothing here depends on how a voice sounds."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from tacotune.checkpoint import config_payload, save_checkpoint
from tacotune.cli import main
from tacotune.config import load_config
from tacotune.errors import TextError
from tacotune.export.bundle import MANIFEST, ExportError
from tacotune.export.exporter import export_voice
from tacotune.export.runtime import OnnxVoice
from tacotune.export.synthesizer import OnnxSynthesizer
from tacotune.registry import Registry, RegistryError
from tacotune.vocoder.hifigan import build_generator
from tacotune.vocoder.neural import vocoder_payload
from tacotune.vocoder.session import INFERENCE_KEYS
from test_synthesize import untrained_payload
from test_vocoder_use import vocoder_file


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An acoustic checkpoint, a vocoder checkpoint that fits it, a vocoder run (its
    checkpoints/model.pt as `tacotune vocoder train` writes it) and the voice's ONNX export
    with a vocoder.onnx."""
    root = tmp_path_factory.mktemp("integrity")
    acoustic = root / "acoustic.pt"
    payload = untrained_payload("model.max_decoder_steps=20")
    save_checkpoint(acoustic, {**payload, "dataset_fingerprint": "fp", "code_version": "test"})
    vocoder = vocoder_file(root / "vocoder.pt")
    config = load_config(None, ["vocoder.generator=v3", "vocoder.generator_channels=32"])
    generator = build_generator("v3", config.audio.n_mels, config.audio.hop_length, 32)
    run = {
        **vocoder_payload(generator, config),
        "config": config_payload(config),
        "state": {"step": 10},
        "mels": {"source": "recordings"},
        "dataset_fingerprint": "fp",
        "code_version": "test",
    }
    assert set(run) == set(INFERENCE_KEYS)  # what a vocoder run's model.pt holds
    save_checkpoint(root / "vocoder_run" / "checkpoints" / "model.pt", run)
    bundle = export_voice(acoustic, root / "onnx", vocoder=vocoder)
    return {"acoustic": acoustic, "vocoder": vocoder, "run": root / "vocoder_run", "onnx": bundle}


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a failed command wrote to stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and " ERROR " in lines[0], lines
    return lines[0]


def _flip_byte(path: Path) -> str:
    """Change one byte in the middle of `path`; returns the file's new sha256."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return hashlib.sha256(bytes(data)).hexdigest()


# --- the registry ---------------------------------------------------------------------------


def test_a_vocoder_run_is_not_registered_as_a_voice(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--root", str(tmp_path / "registry")]
    for given in (files["run"], files["run"] / "checkpoints" / "model.pt", files["vocoder"]):
        assert main(["registry", "add", str(given), "--name", "voc", *root]) == 1
        message = _error(capsys)
        assert "is a neural vocoder (a run of `tacotune vocoder train`), not a voice" in message
        assert "tacotune registry add VOICE_RUN --name NAME --vocoder" in message, message
    assert not (tmp_path / "registry" / "voc").exists()
    # the way a vocoder does belong in the registry: with its voice
    add = ["registry", "add", str(files["acoustic"]), "--name", "voice"]
    assert main([*add, "--vocoder", str(files["run"]), *root]) == 0


@pytest.fixture
def registered(files: dict[str, Path], tmp_path: Path) -> Path:
    """A registry root holding voice:1 (with vocoder.pt) and voice:2, none in production."""
    registry = Registry(tmp_path / "registry")
    registry.register("voice", files["acoustic"], vocoder=files["vocoder"], metrics={"x": 1.0})
    registry.register("voice", files["acoustic"])
    return registry.root


@pytest.mark.parametrize("damaged", ["vocoder.pt", "model.pt", "config.yaml", "metrics.json"])
def test_every_file_of_a_version_is_verified_by_every_verb(
    registered: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: str
) -> None:
    from tacotune.serve.voices import load_voices

    version = registered / "voice" / "v1"
    expected = json.loads((version / "meta.json").read_text(encoding="utf-8"))
    recorded = hashlib.sha256((version / damaged).read_bytes()).hexdigest()
    assert recorded in expected.values()  # meta.json records every file
    found = _flip_byte(version / damaged)
    root = ["--root", str(registered)]
    for argv in (
        ["registry", "show", "voice:1", *root],
        ["registry", "promote", "voice:1", "--stage", "production", *root],
        ["registry", "export", "voice:1", "-o", str(tmp_path / "out"), *root],
        ["export", "voice:1", "--registry", str(registered), "-o", str(tmp_path / "onnx")],
    ):
        assert main(argv) == 1, argv
        message = _error(capsys)
        assert f"{version / damaged} of voice:1 was changed after registration" in message
        assert f"its sha256 is {found}, meta.json records {recorded}" in message, message
    assert json.loads((version / "meta.json").read_text(encoding="utf-8"))["stage"] == "candidate"
    assert not (tmp_path / "out").exists() and not (tmp_path / "onnx").exists()
    # the server loads a registry version through the same check
    with pytest.raises(RegistryError, match=f"{damaged} of voice:1 was changed after"):
        load_voices(["voice:1"], Registry(registered))
    assert main(["registry", "show", "voice:2", *root]) == 0  # the other version is intact


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: {**m, "version": str(m["version"])}, r"version is '1', expected an integer"),
        (lambda m: {**m, "score": "0.5"}, r"score is '0.5', expected a finite number or null"),
        (lambda m: {**m, "stage": "live"}, r"stage is 'live', expected one of candidate"),
        (lambda m: {**m, "metrics": {"x": "1"}}, r"metrics is .*, expected an object of finite"),
        (lambda m: {**m, "vocoder_sha256": 7}, r"vocoder_sha256 is 7, expected a sha256"),
        (lambda m: {**m, "version": 2}, r"it describes 'voice:2', its directory holds voice:1"),
        (lambda m: {**m, "name": "other"}, r"describes 'other:1', its directory holds voice:1"),
        (lambda m: {k: v for k, v in m.items() if k != "created"}, r"it lacks created"),
        (lambda m: {**m, "extra": 1}, r"unknown fields \['extra'\]"),
        (lambda m: [m], r"it holds a JSON list, not an object"),
    ],
)
def test_a_damaged_meta_json_is_one_line_naming_it(
    registered: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict[str, Any]], Any],
    message: str,
) -> None:
    meta = registered / "voice" / "v1" / "meta.json"
    meta.write_text(json.dumps(edit(json.loads(meta.read_text(encoding="utf-8")))), "utf-8")
    for argv in (["registry", "list"], ["registry", "show", "voice:2"]):
        assert main([*argv, "--root", str(registered)]) == 1
        line = _error(capsys)
        assert f"{meta} is damaged: " in line and f"remove {meta.parent}" in line, line
        assert re.search(message, line), line


def test_unicode_names_are_accepted_and_long_or_unsafe_ones_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--root", str(tmp_path / "registry")]
    run = tmp_path / "голос"  # a run directory named in Cyrillic: its name is the default
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(files["acoustic"], run / "checkpoints" / "model.pt")
    assert main(["registry", "add", str(run), *root]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "голос"
    for name in ("anna-2", "Ёлка_1.0", "日本語"):
        assert main(["registry", "add", str(files["acoustic"]), "--name", name, *root]) == 0
        capsys.readouterr()
    assert main(["registry", "show", "голос:1", *root]) == 0
    assert json.loads(capsys.readouterr().out)["directory"].endswith("голос/v1")
    # a name written decomposed (as macOS writes folder names) is the composed name
    decomposed = unicodedata.normalize("NFD", "Алёна")
    assert decomposed != "Алёна"
    assert main(["registry", "add", str(files["acoustic"]), "--name", decomposed, *root]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "Алёна"
    for ref in ("Алёна:1", f"{decomposed}:1"):
        assert main(["registry", "show", ref, *root]) == 0
        capsys.readouterr()
    assert main(["registry", "list", *root]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("голос", "anna-2", "Ёлка_1.0", "日本語"))
    long = "а" * 300
    assert main(["registry", "add", str(files["acoustic"]), "--name", long, *root]) == 1
    assert "it has 300 characters, the most is 60; choose another with --name" in _error(capsys)
    for bad in ("..", ".hidden", "a/b", "../x", "v:1", "my voice", "a\nb", "a\x1bb", "-x", ""):
        assert main(["registry", "add", str(files["acoustic"]), f"--name={bad}", *root]) == 1
        assert "is not allowed: use a letter or digit (any script)" in _error(capsys), bad
    names = {p.name for p in (tmp_path / "registry").iterdir()} - {".lock"}
    assert names == {"голос", "anna-2", "Ёлка_1.0", "日本語", "Алёна"}  # nothing else was created


# --- export bundles -------------------------------------------------------------------------


def _copy(files: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(files["onnx"], tmp_path / "bundle", symlinks=True))


def _edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    (bundle / MANIFEST).write_text(json.dumps(edit(manifest)), encoding="utf-8")


def _replace(bundle: Path, name: str, data: bytes) -> None:
    """Put `data` in `bundle/name` and record it in the manifest, as a careful forger would."""
    (bundle / name).unlink()
    (bundle / name).write_bytes(data)

    def record(manifest: dict[str, Any]) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        manifest["files"][name] = {"sha256": digest, "bytes": len(data)}
        return manifest

    _edit_manifest(bundle, record)


def _flatten_vocoder(n_mels: int) -> bytes:
    """An ONNX graph shaped like a vocoder: mel (B, n_mels, T) -> audio (B, n_mels * T)."""
    node = helper.make_node("Flatten", ["mel"], ["audio"], axis=1)
    graph = helper.make_graph(
        [node],
        "flatten",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", n_mels, "frames"])],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def test_the_bundle_loads_and_speaks_with_its_vocoder(files: dict[str, Path]) -> None:
    voice = OnnxVoice(files["onnx"])
    assert voice.vocoder is not None and len(voice.synthesize("кот.")) % 256 == 0


@pytest.mark.parametrize(
    ("graph", "replacement", "message"),
    [
        (
            "vocoder.onnx",
            "postnet.onnx",
            r"its outputs are \['mel_postnet'\], expected \['audio'\]",
        ),
        ("postnet.onnx", "encoder.onnx", r"its inputs are \['text', 'text_lengths'\], expected"),
        ("encoder.onnx", "decoder_step.onnx", r"its inputs are \['frame', 'prenet_masks'"),
        ("decoder_step.onnx", "postnet.onnx", r"no input 'frame'"),
        ("vocoder.onnx", 40, r"'mel' is tensor\(float\) \(batch, 40, frames\), expected .*80"),
        ("vocoder.onnx", b"not a graph at all", r"onnxruntime cannot load .*vocoder.onnx"),
    ],
)
def test_a_graph_that_is_not_the_voices_is_refused_at_load(
    files: dict[str, Path], tmp_path: Path, graph: str, replacement: str | int | bytes, message: str
) -> None:
    bundle = _copy(files, tmp_path)
    if isinstance(replacement, str):
        data = (bundle / replacement).read_bytes()
    elif isinstance(replacement, int):
        data = _flatten_vocoder(replacement)
    else:
        data = replacement
    _replace(bundle, graph, data)
    with pytest.raises(ExportError, match=message) as error:
        OnnxSynthesizer(bundle)
    assert str(bundle / graph) in str(error.value) and "\n" not in str(error.value)


def test_a_graph_with_the_right_inputs_and_outputs_is_accepted(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """The check is about the interface, not the bytes: a well-formed 80-band vocoder loads."""
    bundle = _copy(files, tmp_path)
    _replace(bundle, "vocoder.onnx", _flatten_vocoder(80))
    assert OnnxVoice(bundle).vocoder is not None


def test_the_step_graph_must_carry_its_state(files: dict[str, Path], tmp_path: Path) -> None:
    bundle = _copy(files, tmp_path)
    model = onnx.load(str(bundle / "decoder_step.onnx"))
    (output,) = [o for o in model.graph.output if o.name == "next_att_h"]
    output.name = "next_att_hh"  # the runtime would feed att_h zeros at every step
    for node in model.graph.node:
        for names in (node.input, node.output):
            names[:] = ["next_att_hh" if n == "next_att_h" else n for n in names]
    _replace(bundle, "decoder_step.onnx", model.SerializeToString())
    with pytest.raises(ExportError, match=r"input 'att_h' has no output next_att_h like it"):
        OnnxVoice(bundle)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: {**m, "model": "x"}, r"is damaged: model is 'x', expected an object"),
        (
            lambda m: {**m, "model": {**m["model"], "reduction_factor": "2"}},
            r"model.reduction_factor is '2', expected an integer >= 1",
        ),
        (
            lambda m: {**m, "model": {**m["model"], "prenet_dropout": None}},
            r"model.prenet_dropout is None, expected a number in \[0, 1\)",
        ),
        (lambda m: {**m, "sample_rate": 1.5}, r"sample_rate is 1.5, expected an integer"),
        (lambda m: {**m, "vocoder": {"kind": "wavenet"}}, r"vocoder.kind is 'wavenet'"),
        (
            lambda m: {**m, "vocoder": {"kind": "griffin-lim", "momentum": 0.99}},
            r"vocoder.log_clamp is None, expected a number > 0",
        ),
        (
            lambda m: {**m, "model": {**m["model"], "n_mels": 40}},
            r"says 40 mel bands at 22050 Hz, .*config.yaml 80 at 22050 Hz",
        ),
        (
            lambda m: {**m, "files": {**m["files"], "encoder.onnx": {"sha256": "ab"}}},
            r"encoder.onnx has \d+ bytes, the manifest records None",
        ),
    ],
)
def test_a_damaged_manifest_is_one_error(
    files: dict[str, Path],
    tmp_path: Path,
    edit: Callable[[dict[str, Any]], Any],
    message: str,
) -> None:
    bundle = _copy(files, tmp_path)
    _edit_manifest(bundle, edit)
    with pytest.raises(ExportError, match=message) as error:
        OnnxVoice(bundle)
    assert "\n" not in str(error.value)


def test_the_manifest_cannot_name_files_outside_the_bundle(
    files: dict[str, Path], tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n", encoding="utf-8")
    entry = {"sha256": hashlib.sha256(b"secret\n").hexdigest(), "bytes": 7}
    bundle = _copy(files, tmp_path)
    for name in (str(outside), "../outside.txt", "sub/../../outside.txt", "..", "a\\b"):
        _edit_manifest(bundle, lambda m, n=name: {**m, "files": {**m["files"], n: entry}})
        with pytest.raises(ExportError, match=r"which is no file name in the export directory"):
            OnnxVoice(bundle)
        _edit_manifest(
            bundle,
            lambda m, n=name: {**m, "files": {k: v for k, v in m["files"].items() if k != n}},
        )
    (bundle / "README.md").unlink()
    (bundle / "README.md").symlink_to(outside)  # a listed name that is a link out
    _edit_manifest(bundle, lambda m: {**m, "files": {**m["files"], "README.md": entry}})
    with pytest.raises(ExportError, match=r"README.md leads outside the export directory"):
        OnnxVoice(bundle)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{ not json", r"frontend.json is not a text frontend's state \(Expecting"),
        (b"\xff\xfe", r"frontend.json is not a text frontend's state"),
        (b"[1, 2]", r"not a text frontend's state \(found \[1, 2\]\)"),
        (None, r"dictionary is None"),  # the key removed
        ("stress", r"frontend.stress must be one of \['auto', 'manual', 'off'\]"),
        ("symbols", r"different symbol table"),
    ],
)
def test_a_damaged_frontend_file_is_one_error(
    files: dict[str, Path], tmp_path: Path, content: bytes | str | None, message: str
) -> None:
    bundle = _copy(files, tmp_path)
    state = json.loads((bundle / "frontend.json").read_text(encoding="utf-8"))
    if content is None:
        del state["dictionary"]
    elif content == "stress":
        state["stress"] = "loud"
    elif content == "symbols":
        state["symbols"] = state["symbols"][:-1]
    data = content if isinstance(content, bytes) else json.dumps(state).encode()
    _replace(bundle, "frontend.json", data)
    with pytest.raises((ExportError, TextError), match=message) as error:
        OnnxVoice(bundle)
    assert "\n" not in str(error.value)


def test_a_served_bundle_with_a_foreign_vocoder_never_starts(
    files: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    from tacotune.serve.voices import load_voice

    bundle = _copy(files, tmp_path)
    _replace(bundle, "vocoder.onnx", (bundle / "postnet.onnx").read_bytes())
    with pytest.raises(ExportError, match=r"vocoder.onnx is not the vocoder graph of this voice"):
        load_voice(f"fast={bundle}", Registry(tmp_path / "empty"))
