"""Dataset preparation: every exclusion reason on a dataset built to trigger it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tacotune.config import Config, load_config
from tacotune.data.formats import check_id
from tacotune.data.manifest import load_prepared
from tacotune.data.prepare import inside_output, prepare_dataset
from tacotune.errors import DatasetError

from conftest import SR, AudioSpec, for_text, good_rows, speechlike

Builder = Callable[..., Path]


def _config(*overrides: str) -> Config:
    # stress off keeps these tests fast; silero gets its own test below
    return load_config(
        None, ["text.stress=off", "data.workers=1", "data.max_excluded_fraction=1.0", *overrides]
    )


LONG_TEXT = "очень длинный текст " * 20  # 400 characters
SPOKEN_16S = "очень длинный текст " * 13  # 221 letters: 15.5 s at the fixture's speech rate
BAD_ROWS: dict[str, tuple[str, str, AudioSpec]] = {
    "missing_audio": ("no_file", "тут нет файла.", None),
    "unreadable_audio": ("corrupt", "файл испорчен.", b"RIFF\x00\x00garbage" * 10),
    "non_finite_audio": ("nan", "в файле нечисла.", np.full(SR, np.nan, dtype=np.float32)),
    "invalid_text": ("bad_mark", "з+мок закрыт.", for_text("змок закрыт")),
    "empty_text": ("empty", "… — !", speechlike(1.0)),
    "unknown_characters": ("emoji", "привет 😀 мир", for_text("привет мир")),
    "text_too_long": ("long_text", LONG_TEXT, for_text(LONG_TEXT)),
    "silent_audio": ("silent", "тишина в зале.", np.zeros(SR * 2, dtype=np.float32)),
    "clipping": ("clipped", "очень громко.", np.sign(speechlike(1.0, level=1.0)) * 1.0),
    "too_short": ("short", "да.", speechlike(0.2)),
    "too_long": ("very_long", SPOKEN_16S, for_text(SPOKEN_16S)),
    "speech_rate_outlier": (
        "fast",
        "это слишком длинный текст для такой короткой записи.",
        speechlike(0.8),
    ),
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_each_bad_row_is_excluded_with_its_reason(make_ljspeech: Builder, reason: str) -> None:
    bad_id = BAD_ROWS[reason][0]
    expected = "unreadable_audio" if reason == "non_finite_audio" else reason
    data = make_ljspeech([*good_rows(), BAD_ROWS[reason]])
    result = prepare_dataset(data, data.parent / "out", _config())
    excluded = result.report["excluded"]
    assert list(excluded) == [expected], excluded
    assert excluded[expected]["count"] == 1
    assert excluded[expected]["examples"][0]["id"] == bad_id
    assert excluded[expected]["examples"][0]["where"] == "metadata.csv:11"
    kept = {e.id for e in load_prepared(result.root).entries}
    assert bad_id not in kept and len(kept) == 10


def test_malformed_and_duplicate_rows_are_excluded(make_ljspeech: Builder) -> None:
    data = make_ljspeech(good_rows())
    with (data / "metadata.csv").open("a", encoding="utf-8") as f:
        f.write("extra|one|two|three\ngood_03|повтор строки.\n")
    report = prepare_dataset(data, data.parent / "out", _config()).report
    assert report["excluded"]["malformed_row"]["examples"][0]["where"] == "metadata.csv:11"
    assert report["excluded"]["duplicate_id"]["examples"][0]["where"] == "metadata.csv:12"
    assert report["totals"]["kept"] == 10


def test_manifest_rows_carry_every_stage(make_ljspeech: Builder) -> None:
    data = make_ljspeech([("n1", "В 2 часа Ёлка!", for_text("в два часа ёлка")), *good_rows(9)])
    result = prepare_dataset(data, data.parent / "out", _config())
    prepared = load_prepared(result.root)
    entry = next(e for e in prepared.entries if e.id == "n1")
    assert entry.raw_text == "В 2 часа Ёлка!"
    assert entry.text == "в два часа ёлка!"
    mel = np.load(result.root / entry.mel_path)
    assert mel.shape == (80, entry.n_frames)
    assert entry.sample_rate == SR
    assert prepared.fingerprint == result.report["dataset_fingerprint"]
    assert {e.split for e in prepared.entries} == {"train", "val"}


def test_rerun_is_incremental_and_audio_changes_invalidate_the_cache(
    make_ljspeech: Builder,
) -> None:
    data = make_ljspeech(good_rows())
    out = data.parent / "out"
    first = prepare_dataset(data, out, _config()).report["measurement"]
    second = prepare_dataset(data, out, _config()).report["measurement"]
    assert (first["computed"], second["computed"], second["reused_from_last_run"]) == (10, 0, 10)
    sf.write(data / "wavs" / "good_04.wav", for_text(" ".join(["слово"] * 7)), SR)
    third = prepare_dataset(data, out, _config()).report["measurement"]
    assert third["computed"] == 1
    changed = prepare_dataset(data, out, _config("audio.n_mels=40")).report["measurement"]
    assert changed["computed"] == 10 and changed["mel_cache"] != first["mel_cache"]
    entry = load_prepared(out).entries[0]
    assert np.load(out / entry.mel_path).shape[0] == 40


def test_rows_without_their_cached_audio_are_measured_again(make_ljspeech: Builder) -> None:
    data = make_ljspeech(good_rows())
    out = data.parent / "out"
    prepare_dataset(data, out, _config())
    entry = load_prepared(out).entries[0]
    (out / entry.trimmed_audio_path).unlink()
    assert prepare_dataset(data, out, _config()).report["measurement"]["computed"] == 1
    assert (out / entry.trimmed_audio_path).is_file()
    # a cache written before audio was cached (no audio_file field): everything again
    cache = out / ".cache" / "analysis.jsonl"
    rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    old = [{k: v for k, v in row.items() if k != "audio_file"} for row in rows]
    cache.write_text("".join(json.dumps(row) + "\n" for row in old), encoding="utf-8")
    assert prepare_dataset(data, out, _config()).report["measurement"]["computed"] == 10


def test_thresholds_apply_without_measuring_again(make_ljspeech: Builder) -> None:
    data = make_ljspeech([*good_rows(), BAD_ROWS["too_long"]])
    out = data.parent / "out"
    assert "too_long" in prepare_dataset(data, out, _config()).report["excluded"]
    report = prepare_dataset(data, out, _config("data.max_duration=20.0")).report
    assert report["excluded"] == {} and report["measurement"]["computed"] == 0


def test_strict_fails_on_any_exclusion_but_writes_the_report(make_ljspeech: Builder) -> None:
    data = make_ljspeech([*good_rows(), BAD_ROWS["silent_audio"]])
    out = data.parent / "out"
    with pytest.raises(DatasetError, match="--strict: 1 of 11 rows"):
        prepare_dataset(data, out, _config(), strict=True)
    assert "silent_audio" in (out / "report.md").read_text(encoding="utf-8")
    assert not (out / "manifest.jsonl").exists()
    with pytest.raises(DatasetError, match="failed"):
        load_prepared(out)


def test_too_many_exclusions_fail_loudly(make_ljspeech: Builder) -> None:
    rows = [*good_rows(4), *(BAD_ROWS[r] for r in ("silent_audio", "too_short", "missing_audio"))]
    data = make_ljspeech(rows)
    with pytest.raises(DatasetError, match=r"3 of 7 rows \(43%\) were excluded"):
        prepare_dataset(data, data.parent / "out", _config("data.max_excluded_fraction=0.2"))
    report = json.loads((data.parent / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["status"].startswith("failed")


def test_resampling_and_downmixing_are_reported_not_excluded(make_ljspeech: Builder) -> None:
    data = make_ljspeech(good_rows())
    stereo = np.stack([speechlike(2.0, sr=16000)] * 2, axis=1)
    sf.write(data / "wavs" / "good_00.wav", stereo, 16000)
    report = prepare_dataset(data, data.parent / "out", _config()).report
    assert report["excluded"] == {}
    assert report["information"]["source_sample_rates"] == {"16000": 1, str(SR): 9}
    assert report["information"]["downmixed_to_mono"] == 1


def test_ruslan_layout(tmp_path: Path) -> None:
    root = tmp_path / "ruslan"
    (root / "RUSLAN").mkdir(parents=True)
    lines = []
    for utt_id, text, audio in good_rows():
        sf.write(root / "RUSLAN" / f"{utt_id}_RUSLAN.wav", audio, SR)
        lines.append(f"{utt_id}_RUSLAN|{text}")
    (root / "metadata_RUSLAN_22200.csv").write_text("\n".join(lines), encoding="utf-8")
    report = prepare_dataset(root, tmp_path / "out", _config()).report
    assert report["format"] == "ruslan" and report["totals"]["kept"] == 10


def test_path_text_lists_keep_the_users_split(tmp_path: Path) -> None:
    root = tmp_path / "lists"
    (root / "audio").mkdir(parents=True)
    rows = good_rows()
    for utt_id, _, audio in rows:
        sf.write(root / "audio" / f"{utt_id}.wav", audio, SR)
    train = [f"audio/{i}.wav|{t}" for i, t, _ in rows[:8]]
    val = [f"{root / 'audio' / i}.wav|{t}" for i, t, _ in rows[8:]]  # absolute paths too
    (root / "train.csv").write_text("\n".join(train), encoding="utf-8")
    (root / "val.csv").write_text("\n".join(val), encoding="utf-8")
    prepared = load_prepared(prepare_dataset(root, tmp_path / "out", _config()).root)
    assert [e.id for e in prepared.split("val")] == ["good_08", "good_09"]


def test_unknown_layout_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"metadata\.csv with wavs/"):
        prepare_dataset(tmp_path, tmp_path / "out", _config())


def test_automatic_stress_is_applied_and_counted(make_ljspeech: Builder) -> None:
    data = make_ljspeech(good_rows())
    report = prepare_dataset(data, data.parent / "out", _config("text.stress=auto")).report
    assert report["information"]["stress_marks_by_source"]["auto"] > 30
    entry = load_prepared(data.parent / "out").entries[0]
    assert entry.text == "м+ама м+ыла р+аму с утр+а."


@pytest.mark.parametrize(
    "utt_id", ["good_00", "LJ001-0001", "RUSLAN_0001", "запись 1", "a.b", "_x"]
)
def test_plain_ids_are_accepted(utt_id: str) -> None:
    assert check_id(utt_id) == ""


@pytest.mark.parametrize(
    "utt_id", ["../x", "/abs/x", "a/b", "a\\b", ".hidden", " lead", "..", "x" * 101, "a\x00b"]
)
def test_ids_that_are_no_plain_name_are_refused(utt_id: str) -> None:
    assert "is not a plain name" in check_id(utt_id)


def test_files_prepare_writes_stay_inside_the_output_directory() -> None:
    assert inside_output("mels", "abc", "good_00.npy") == "mels/abc/good_00.npy"
    for parts in [("mels", "abc", "../../../x.npy"), ("mels", "/etc/x.npy"), ("..", "x")]:
        with pytest.raises(DatasetError, match="outside the prepared directory"):
            inside_output(*parts)


def test_a_three_column_file_keeps_three_columns_for_every_row(make_ljspeech: Builder) -> None:
    data = make_ljspeech(good_rows())
    metadata = data / "metadata.csv"
    lines = metadata.read_text(encoding="utf-8").splitlines()
    rows = [f"{line}|{line.split('|')[1]}" for line in lines[:-1]] + [lines[-1]]  # last: 2 columns
    metadata.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = prepare_dataset(data, data.parent / "out", _config()).report
    example = report["excluded"]["malformed_row"]["examples"][0]
    assert example["where"] == "metadata.csv:10"
    assert example["detail"] == (
        "expected 3 columns (id|raw|normalized) like the rest of metadata.csv, found 2"
    )
    assert report["totals"]["kept"] == 9


def test_training_on_raw_data_hints_a_prepare_command_that_is_safe_to_run(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hint is a command that runs as printed and writes nothing into the raw dataset."""
    import re
    import shlex
    import shutil

    from tacotune.cli import main

    raw = tmp_path / "my voice"  # a space: the printed command must quote it
    shutil.copytree(prepared.parent / "lj", raw)
    before = sorted(str(p.relative_to(raw)) for p in raw.rglob("*"))
    assert main(["-q", "train", str(raw), "-o", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a refused command leaves no empty directory
    hint = re.search(r"`(tacotune prepare [^`]*)`", error)
    assert hint is not None, error
    argv = shlex.split(hint.group(1))[1:]
    assert main(["-q", *argv, "--set", "data.workers=1"]) == 0
    assert sorted(str(p.relative_to(raw)) for p in raw.rglob("*")) == before  # untouched
    assert load_prepared(tmp_path / "my voice-prepared").entries
