"""Fault injection at the input boundaries: hostile or broken input through the real CLI.

Each test feeds one class of bad input to `tacotune ...` (in process, through
`tacotune.cli.main`, unless the fault is a hang that needs a killable subprocess)
and checks that it is refused with a clear one-line error or a named exclusion,
and that nothing outside the requested output is touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf

from tacotune.cli import main
from tacotune.text import stress

from conftest import SR, for_text, good_rows

Builder = Callable[..., Path]
FAST = ["--set", "text.stress=off", "--set", "data.workers=1"]
# every excluded row would otherwise fail the run as a whole (data.max_excluded_fraction)
LENIENT = [*FAST, "--set", "data.max_excluded_fraction=1.0"]
# 9 levels of 9 aliases each: 387 million strings once expanded, in 354 bytes
BILLION_LAUGHS = "train:\n  batch_size:\n    - &a [l,l,l,l,l,l,l,l,l]\n" + "".join(
    f"    - &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `tacotune -q ARGV`."""
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _report(out_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out_dir / "report.json").read_text(encoding="utf-8"))


# --- dataset ids are names, not paths ---------------------------------------------------


def test_dataset_ids_that_are_paths_are_excluded_and_nothing_is_written_outside(
    tmp_path: Path, make_ljspeech: Builder, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("escape", "absolute"):
        sf.write(elsewhere / f"{name}.wav", for_text("чужой файл рядом"), SR)
    data = make_ljspeech(good_rows())
    (data / "wavs" / ".hidden.wav").write_bytes((elsewhere / "escape.wav").read_bytes())
    hostile = ["../../elsewhere/escape", str(elsewhere / "absolute"), ".hidden"]
    with (data / "metadata.csv").open("a", encoding="utf-8") as f:
        f.writelines(f"{utt_id}|чужой файл рядом\n" for utt_id in hostile)
    out = tmp_path / "out"
    code, _, _ = _cli(capsys, "prepare", str(data), "-o", str(out), *LENIENT)
    assert code == 0
    excluded = _report(out)["excluded"]
    assert list(excluded) == ["invalid_id"]
    assert [e["id"] for e in excluded["invalid_id"]["examples"]] == hostile
    assert "letters, digits" in excluded["invalid_id"]["examples"][0]["detail"]
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert all(
        p.is_relative_to(out) or p.is_relative_to(data)
        for p in written - {elsewhere / "escape.wav", elsewhere / "absolute.wav"}
    ), sorted(written)
    assert len(list(elsewhere.iterdir())) == 2


def test_prepare_onto_an_existing_file_is_a_clear_error(
    tmp_path: Path, make_ljspeech: Builder, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_ljspeech(good_rows(3))
    target = tmp_path / "taken.txt"
    target.write_text("someone's notes", encoding="utf-8")
    code, _, err = _cli(capsys, "prepare", str(data), "-o", str(target), *FAST)
    assert code == 1
    assert "is a file, not a directory" in err and str(target) in err
    assert target.read_text(encoding="utf-8") == "someone's notes"


def test_non_utf8_metadata_and_dictionary_are_named(
    tmp_path: Path, make_ljspeech: Builder, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_ljspeech(good_rows(3))
    (data / "metadata.csv").write_bytes("good_00|мама\n".encode("cp1251"))
    code, _, err = _cli(capsys, "prepare", str(data), "-o", str(tmp_path / "out"), *FAST)
    assert code == 1 and "metadata.csv is not UTF-8" in err
    dictionary = tmp_path / "stress.txt"
    dictionary.write_bytes("замок|зам+ок\n".encode("cp1251"))
    code, _, err = _cli(
        capsys, "text", "замок", "--set", "text.stress=manual",
        "--set", f"text.stress_dictionary={dictionary}",
    )  # fmt: skip
    assert code == 1 and f"stress dictionary {dictionary} is not UTF-8" in err


# --- metadata layout is decided once per file -------------------------------------------


def test_a_pipe_inside_the_text_of_a_two_column_file_is_a_malformed_row(
    tmp_path: Path, make_ljspeech: Builder, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "мама мыла раму | а папа читал газету"
    data = make_ljspeech([*good_rows(), ("piped", text, for_text(text))])
    out = tmp_path / "out"
    code, _, _ = _cli(capsys, "prepare", str(data), "-o", str(out), *LENIENT)
    assert code == 0
    excluded = _report(out)["excluded"]
    assert list(excluded) == ["malformed_row"]
    example = excluded["malformed_row"]["examples"][0]
    assert example["id"] == "piped" and example["where"] == "metadata.csv:11"
    assert "2 columns (id|text) like the rest of metadata.csv, found 3" in example["detail"]
    assert "'|' inside the text" in example["detail"]


# --- configs: no alias expansion, bounded messages, only readable files ------------------


def test_yaml_aliases_are_refused_with_a_short_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_bomb = "\n".join(BILLION_LAUGHS.splitlines()[:6]) + "\n"  # 9**4 strings: harmless
    config = tmp_path / "laughs.yaml"
    config.write_text(small_bomb, encoding="utf-8")
    code, _, err = _cli(capsys, "config", "--config", str(config))
    assert code == 1
    assert "anchors and aliases" in err and str(config) in err
    assert len(err) < 600, err[:600]


@pytest.mark.slow
def test_billion_laughs_config_fails_at_once(tmp_path: Path) -> None:
    config = tmp_path / "laughs.yaml"
    config.write_text(BILLION_LAUGHS, encoding="utf-8")
    assert len(BILLION_LAUGHS.encode()) < 400
    done = subprocess.run(
        [sys.executable, "-m", "tacotune", "-q", "config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,  # before the fix it grows without bound until killed here
        check=False,
    )
    assert done.returncode == 1 and "anchors and aliases" in done.stderr


def test_aliases_in_overrides_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "config", "--set", "train.probe_sentences=[&a да, *a]")
    assert code == 1 and "anchors and aliases" in err and "--set" in err


def test_long_values_are_shortened_in_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "config", "--set", f"train.batch_size={'x' * 100_000}")
    assert code == 1 and "train.batch_size must be an integer" in err
    assert len(err) < 400, len(err)
    code, _, err = _cli(capsys, "config", "--set", f"train.{'y' * 100_000}=1")
    assert code == 1 and "unknown config key" in err and len(err) < 400, len(err)


def test_config_that_is_a_directory_binary_or_too_deep_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "config", "--config", str(tmp_path))
    assert code == 1 and "is a directory, not a YAML file" in err
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00\x08\x00\xff\xfe\x80" * 20)
    code, _, err = _cli(capsys, "config", "--config", str(binary))
    assert code == 1 and "not a UTF-8 text file" in err
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000, encoding="utf-8")
    code, _, err = _cli(capsys, "config", "--config", str(deep))
    assert code == 1 and "nested more than" in err


# --- text: bounded work, positions in the user's input, sane readings --------------------


def _stress_must_not_run(text: str) -> str:
    raise AssertionError(f"automatic stress ran on {len(text)} characters")


def test_a_very_long_word_is_refused_before_automatic_stress_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stress, "silero_accentor", lambda: _stress_must_not_run)
    word = "а" * 1500
    code, _, err = _cli(capsys, "text", f"Слово 2 раза: {word} и всё.", "--set", "text.stress=auto")
    assert code == 1
    limit = stress.MAX_STRESS_WORD_LETTERS
    assert f"word 4 of the normalized text ('{'а' * 20}…') has 1500 letters" in err
    assert f"more than the {limit} letters automatic stress accepts" in err
    assert len(err) < 600


def test_a_long_word_in_a_dataset_is_excluded_before_automatic_stress_runs(
    tmp_path: Path,
    make_ljspeech: Builder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(stress, "silero_accentor", lambda: lambda text: text)  # no marks
    long_row = ("long_word", "ы" * 1000, for_text("ы" * 100))
    data = make_ljspeech([*good_rows(), long_row])
    out = tmp_path / "out"
    code, _, _ = _cli(
        capsys, "prepare", str(data), "-o", str(out), *LENIENT, "--set", "text.stress=auto"
    )
    assert code == 0
    excluded = _report(out)["excluded"]
    assert list(excluded) == ["invalid_text"]
    assert "1000 letters" in excluded["invalid_text"]["examples"][0]["detail"]


def test_a_text_over_the_length_limit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from tacotune.text.frontend import MAX_TEXT_CHARACTERS

    text = "мама мыла раму. " * (MAX_TEXT_CHARACTERS // 16 + 1)
    code, _, err = _cli(capsys, "text", text, "--set", "text.stress=off")
    assert code == 1
    assert f"{len(text)} characters, more than the {MAX_TEXT_CHARACTERS}" in err
    assert len(err) < 600


def test_unknown_characters_are_located_in_the_users_input(
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = "З+амок в 2024 году 😀 закрыт, ☃."
    code, out, _ = _cli(capsys, "text", raw, "--json", "--set", "text.stress=off")
    assert code == 1
    found = {u["char"]: u["positions"] for u in json.loads(out)["unknown"]}
    assert found == {"😀": [raw.index("😀")], "☃": [raw.index("☃")]}
    code, out, _ = _cli(capsys, "text", raw, "--set", "text.stress=off")
    assert f"'😀' (U+1F600) x1 at {raw.index('😀')}" in out


def test_an_impossible_date_is_read_as_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(
        capsys, "text", "45.13.2020 и 12.05.2024", "--json", "--set", "text.stress=off"
    )
    assert code == 0
    assert json.loads(out)["normalized"] == (
        "сорок пять точка тринадцать точка две тысячи двадцать "
        "и двенадцатого мая две тысячи двадцать четвёртого года"
    )


def test_a_synthesis_text_file_that_is_not_utf8_is_named_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_bytes("мама мыла раму\n".encode("cp1251"))
    missing = tmp_path / "no_such_model.pt"
    out_dir = tmp_path / "wavs"
    code, _, err = _cli(
        capsys, "synthesize", str(missing), "--file", str(lines), "--out-dir", str(out_dir)
    )
    assert code == 1 and f"--file {lines} is not UTF-8" in err
    assert not out_dir.exists()
