"""`tacotune auto`: data to a registered voice, its plan for the machine, its quality gate,
and resuming after an interruption."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tacotune.auto import pipeline as auto
from tacotune.auto.inputs import check_arguments, read_state
from tacotune.auto.plan import SCRATCH_RECIPE
from tacotune.config import Config, load_config
from tacotune.registry import Registry

from conftest import TINY_TRAIN, good_rows

AUTO = [
    *TINY_TRAIN,
    "train.eval_every=3",
    "train.max_steps=6",
    "tuning.trials=2",
    "tuning.trial_max_steps=6",
    "tuning.startup_trials=1",
    "tuning.prune_after_step=3",
    "tuning.space=[{key: train.learning_rate, low: 0.001, high: 0.003, log: true}]",
]


def auto_config() -> Config:
    return load_config(None, AUTO)


@pytest.fixture
def data_dir(make_ljspeech: Callable[..., Path]) -> Path:
    return make_ljspeech(good_rows(12), name="voice")


@pytest.fixture(autouse=True)
def laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake hardware facts: a 2-core CPU where the tiny model trains at 50 steps/s (the real
    measurement depends on whatever else this machine is doing)."""
    from tacotune.auto import plan
    from tacotune.train import throughput

    cpu = plan.Hardware(cpu_cores=2, native_bf16=False, gpu="", gpu_memory_gib=0.0)
    monkeypatch.setattr(plan, "detect_hardware", lambda: cpu)
    rate = throughput.StepRate(50.0, 5000.0, 40_000, "fp32")
    monkeypatch.setattr(throughput, "measure_step_rate", lambda *args, **kwargs: rate)
    monkeypatch.setattr(throughput, "measure_evaluation_seconds", lambda *args, **kwargs: 0.0)


def passing_gate(run_dir: Path, best_step: int, usable_ratio: float) -> dict[str, Any]:
    """The gate's answer for a real voice (a six-step tiny model is none)."""
    return {"usable": True, "verdict": "voice metric 0.40", "mcd_ratio": 0.4, "step": best_step}


def test_auto_goes_from_data_to_a_registered_voice_with_a_report(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(auto, "quality_gate", passing_gate)
    # no --config: auto picks the preset for the machine (the tiny overrides keep it fast)
    stages = auto.run_auto(None, data_dir, out, budget_minutes=10, overrides=AUTO)
    assert list(stages) == [
        *("prepare", "plan", "tune", "train", "vocoder", "register", "speak", "report", "alert")
    ]
    assert not stages["vocoder"]["trained"] and stages["plan"]["vocoder_minutes"] == 0
    assert stages["plan"]["trials"] == 2 and stages["plan"]["preset"] == "demo"
    assert stages["prepare"]["kept"] == 12
    # (the plan's window fits two trials at the faked rate; the real trials here are slower,
    # and no trial starts that could not end within the window)
    assert stages["tune"]["counts"]["complete"] + stages["tune"]["counts"]["pruned"] >= 1
    version = Registry(out / "registry").get("voice")
    assert version.ref == stages["register"]["ref"] == "voice:1" and version.stage == "candidate"
    report = (out / "report.md").read_text(encoding="utf-8")
    for piece in (
        "## Plan",
        "2 CPU cores",
        "the small model (demo.yaml)",
        "50.00 training steps per second",
        "## Search",
        "## Final model",
        "## Vocoder",
        "Griffin-Lim: no neural vocoder was trained (vocoder: Griffin-Lim. HiFi-GAN would",
        "## Budget",
        "optimization_history.png",
        "training_curves.png",
        "samples/probe_0.wav",
        "voice:1",
    ):
        assert piece in report, piece
    assert (out / "samples" / "probe_0.wav").exists()
    state = read_state(out / "auto.json")  # as a resumed run reads it: a real one passes
    assert 0 < state["spent_seconds"] < state["budget_seconds"]
    assert stages["alert"]["delivered"]  # (to the log: no other notifier is configured)


def test_a_model_that_is_no_voice_is_registered_as_rejected_and_fails_loudly(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with pytest.raises(auto.NoVoiceError, match=r"not a voice.*stage rejected"):
        auto.run_auto(auto_config(), data_dir, out, budget_minutes=10)
    plan = json.loads((out / "auto.json").read_text())["stages"]["plan"]
    assert plan["preset"] == "" and "your --config" in plan["reasons"][1]  # it always wins
    version = Registry(out / "registry").get("voice")
    assert version.stage == "rejected"
    assert "**NOT A VOICE**" in (out / "report.md").read_text(encoding="utf-8")
    assert any("NO VOICE" in r.getMessage() for r in caplog.records)  # the alert, in the log


def test_the_command_exits_3_when_every_stage_ran_but_the_model_is_no_voice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tacotune.auto
    from tacotune.cli import main

    def no_voice(*args: Any, **kwargs: Any) -> Any:
        raise auto.NoVoiceError("the final model is not a voice (its voice metric is 0.96)")

    monkeypatch.setattr(tacotune.auto, "run_auto", no_voice)
    assert main(["auto", str(tmp_path), "-o", str(tmp_path / "out")]) == 3  # ./run demo reads it
    assert "ERROR tacotune: the final model is not a voice" in capsys.readouterr().err


def write_metrics(run_dir: Path, **values: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 100, **values}) + "\n")


@pytest.mark.parametrize(
    ("values", "usable", "because"),
    [
        ({"free/mcd_ratio": 0.5, "free/reached_end": 1.0, "free/max_steps_rate": 0.0}, True, ""),
        ({"free/mcd_ratio": 0.97, "free/reached_end": 1.0}, False, "voice metric is 0.97"),
        ({"free/mcd_ratio": 0.5, "free/reached_end": 0.2}, False, "does not reach the end"),
        ({"free/mcd_ratio": 0.5, "free/reached_end": 1.0, "free/max_steps_rate": 1.0}, False,
         "step limit"),
        ({}, False, "voice metric is none"),
    ],
)  # fmt: skip
def test_the_quality_gate(
    tmp_path: Path, values: dict[str, float], usable: bool, because: str
) -> None:
    write_metrics(tmp_path / "run", **values)
    gate = auto.quality_gate(tmp_path / "run", 100, usable_ratio=0.9)
    assert gate["usable"] is usable and because in gate["verdict"]


def test_the_plan_fits_the_hardware_and_says_why() -> None:
    from tacotune.auto.plan import Hardware, choose_preset, make_plan

    laptop = Hardware(cpu_cores=2, native_bf16=False, gpu="", gpu_memory_gib=0.0)
    preset, why = choose_preset(laptop, hours=20.0)
    assert preset == "demo" and "2 CPU cores" in why
    big_gpu = Hardware(cpu_cores=16, native_bf16=False, gpu="H100", gpu_memory_gib=79.0)
    assert choose_preset(big_gpu, hours=20.0)[0] == "base"
    assert choose_preset(big_gpu, hours=0.2)[0] == "demo"  # too little speech for 28M
    config = load_config("demo.yaml")
    small = make_plan(config, "demo", rate=2.0, minutes=9.0, reasons=[])
    assert small.trials == 0 and small.final_minutes == 9.0
    assert "no search" in small.reasons[-1] and "all 9.0 min" in small.reasons[-1]
    hour = make_plan(config, "demo", rate=2.0, minutes=60.0, reasons=[])
    assert 2 <= hour.trials < 6 and hour.tuned == ("train.learning_rate", "loss.guided_attn_weight")
    assert hour.trial_minutes * 60 * 2.0 >= 600  # every trial can reach MIN_TRIAL_STEPS
    assert hour.final_minutes >= 30.0  # the final model gets at least half
    paper_on_cpu = make_plan(Config(), "base", rate=0.26, minutes=15.0, reasons=[])
    assert paper_on_cpu.trials == 0  # the measured failure: 6 trials that learned nothing
    wide = make_plan(config, "demo", rate=2.0, minutes=600.0, reasons=[])
    assert "model.reduction_factor" in wide.tuned
    warm = make_plan(config, "demo", rate=2.0, minutes=600.0, reasons=[], warm_start="ru-base")
    assert "model.reduction_factor" not in warm.tuned and warm.trials == wide.trials
    assert "not searched: model.reduction_factor (the weights of ru-base fix them)" in warm.reasons


def test_auto_continues_where_it_was_interrupted(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_speak = auto._speak

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(auto, "_speak", interrupted)
    monkeypatch.setattr(auto, "quality_gate", passing_gate)
    with pytest.raises(KeyboardInterrupt):
        auto.run_auto(auto_config(), data_dir, out, budget_minutes=10)
    done = json.loads((out / "auto.json").read_text())["stages"]
    assert list(done) == ["prepare", "plan", "tune", "train", "vocoder", "register"]

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(auto, "_speak", real_speak)
    for stage in ("_prepare", "_plan", "_tune", "_train", "_vocoder", "_register"):
        monkeypatch.setattr(auto, stage, must_not_run)
    stages = auto.run_auto(auto_config(), data_dir, out, budget_minutes=10)
    assert stages["speak"]["samples"] and (out / "report.md").exists()
    assert len(Registry(out / "registry").versions()) == 1  # registered once


def test_an_unusable_dataset_stops_auto_with_its_report(
    make_ljspeech: Callable[..., Path], tmp_path: Path
) -> None:
    from tacotune.errors import DatasetError

    data = make_ljspeech([(f"x{i}", "тишина.", None) for i in range(5)], name="broken")
    with pytest.raises(DatasetError, match="were excluded"):
        auto.run_auto(auto_config(), data, tmp_path / "out", budget_minutes=10)
    assert (tmp_path / "out" / "prepared" / "report.md").exists()
    assert not (tmp_path / "out" / "study").exists()


def test_the_vocoder_plan_needs_a_gpu_and_time_for_enough_steps() -> None:
    from tacotune.auto.plan import MIN_VOCODER_STEPS, Hardware, plan_vocoder

    laptop = Hardware(cpu_cores=2, native_bf16=False, gpu="", gpu_memory_gib=0.0)
    minutes, why = plan_vocoder(laptop, minutes=600.0, rate=0.0)
    assert minutes == 0 and why.startswith("vocoder: Griffin-Lim") and "2 CPU cores" in why
    gpu = Hardware(cpu_cores=16, native_bf16=False, gpu="H100", gpu_memory_gib=79.0)
    minutes, why = plan_vocoder(gpu, minutes=120.0, rate=5.0)  # 30 min x 5 steps/s
    assert minutes == 30.0 and "HiFi-GAN" in why and "only if it beats Griffin-Lim" in why
    too_short, why = plan_vocoder(gpu, minutes=20.0, rate=50.0)  # 5 min: under the minimum
    assert too_short == 0 and ">= 10 min" in why
    too_slow, why = plan_vocoder(gpu, minutes=120.0, rate=MIN_VOCODER_STEPS / 3600)
    assert too_slow == 0 and "steps/s" in why


@pytest.mark.parametrize(
    ("values", "used", "because"),
    [
        ({"eval/mcd": 5.0, "gl/mcd": 6.0, "eval/pesq": 3.0, "gl/pesq": 2.5}, True,
         "the neural vocoder speaks: MCD 5.00 dB < Griffin-Lim's 6.00, PESQ 3.00 > 2.50"),
        ({"eval/mcd": 5.0, "gl/mcd": 6.0}, True, "MCD 5.00 dB < Griffin-Lim's 6.00"),
        ({"eval/mcd": 44.6, "gl/mcd": 50.3, "eval/pesq": 1.06, "gl/pesq": 2.62}, False,
         "its PESQ 1.06 is not above Griffin-Lim's 2.62"),
        ({"eval/mcd": 7.0, "gl/mcd": 6.0, "eval/pesq": 3.0, "gl/pesq": 2.5}, False,
         "its MCD 7.00 dB is not below Griffin-Lim's 6.00"),
        ({}, False, "never evaluated"),
    ],
)  # fmt: skip
def test_the_vocoder_speaks_only_if_it_beats_griffin_lim(
    tmp_path: Path, values: dict[str, float], used: bool, because: str
) -> None:
    from tacotune.auto.vocoder import vocoder_verdict

    write_metrics(tmp_path / "run", **values)
    verdict = vocoder_verdict(tmp_path / "run", 100)
    assert verdict["used"] is used and because in verdict["reason"]
    assert vocoder_verdict(tmp_path / "run", 200)["used"] is False  # not the best step


@pytest.mark.slow
def test_auto_trains_a_vocoder_when_the_plan_has_time_and_uses_it_if_it_wins(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tacotune.auto import plan
    from tacotune.auto import vocoder as auto_vocoder
    from test_vocoder_train import tiny_vocoder

    gpu = plan.Hardware(cpu_cores=2, native_bf16=False, gpu="test GPU", gpu_memory_gib=8.0)
    monkeypatch.setattr(plan, "detect_hardware", lambda: gpu)
    monkeypatch.setattr(plan, "VOCODER_SHARE", 0.02)  # ~10 s of a 10-minute budget
    monkeypatch.setattr(plan, "MIN_VOCODER_MINUTES", 0.05)
    monkeypatch.setattr(auto_vocoder, "measure_vocoder_rate", lambda config: 1000.0)
    tiny = tiny_vocoder("vocoder.eval_every=1000000")  # one evaluation, at the end
    monkeypatch.setattr(auto_vocoder, "vocoder_config", lambda c: c.replace(vocoder=tiny.vocoder))
    monkeypatch.setattr(auto, "quality_gate", passing_gate)
    real_verdict = auto_vocoder.vocoder_verdict

    def winning(run_dir: Path, best_step: int) -> dict[str, Any]:
        judged = real_verdict(run_dir, best_step)  # a few tiny steps do not beat Griffin-Lim
        assert not judged["used"] and judged["mcd"] is not None
        return {**judged, "used": True, "reason": "the neural vocoder speaks: (test)"}

    monkeypatch.setattr(auto_vocoder, "vocoder_verdict", winning)
    out = tmp_path / "out"
    config = load_config(None, [*AUTO, "tuning.trials=1"])
    stages = auto.run_auto(config, data_dir, out, budget_minutes=10)
    planned = stages["plan"]
    assert 0 < planned["vocoder_minutes"] < 1 and planned["vocoder_steps_per_second"] == 1000
    assert stages["vocoder"]["trained"] and stages["vocoder"]["used"]
    started = json.loads((out / "vocoder" / "events.jsonl").read_text().splitlines()[0])
    assert started["mels"]["checkpoint"] == str(out / "final" / "checkpoints" / "model.pt")
    version = Registry(out / "registry").get("voice")
    assert version.vocoder() is not None  # registered with the voice
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "**HiFi-GAN (`vocoder/`)** speaks" in report and "| Griffin-Lim |" in report
    state = read_state(out / "auto.json")  # as a resumed run reads it: a real one passes
    assert state["spent_seconds"] < state["budget_seconds"]


def test_the_plan_counts_evaluations_in_the_rate_of_a_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """2 steps/s and a 10 s evaluation every 100 steps: 50 s of steps + 10 s of evaluation
    per 100 steps, i.e. 1.67 steps/s for a run (auto once planned 1.69 and got 0.73)."""
    from tacotune.auto import plan
    from tacotune.train import throughput

    rate = throughput.StepRate(2.0, 200.0, 40_000, "fp32")
    monkeypatch.setattr(throughput, "measure_step_rate", lambda *args, **kwargs: rate)
    monkeypatch.setattr(throughput, "measure_evaluation_seconds", lambda *args, **kwargs: 10.0)
    reasons: list[str] = []
    config = load_config("demo.yaml", ["train.eval_every=100"])
    assert plan.run_rate(config, tmp_path, reasons) == pytest.approx(100 / 60)
    assert reasons == [
        "measured here: 2.00 training steps per second and 10.0 s per evaluation (every 100 "
        "steps): 1.67 steps per second in a run"
    ]


def test_from_scratch_reaches_auto_and_the_plan_records_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tacotune.auto
    from tacotune.cli import main

    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return {"register": {"ref": "voice:1"}, "report": {"report": "report.md"}}

    monkeypatch.setattr(tacotune.auto, "run_auto", fake)
    assert main(["auto", str(tmp_path), "-o", str(tmp_path / "out"), "--from-scratch"]) == 0
    assert seen["from_scratch"] is True
    # every stage after the plan trains from what the plan chose
    state = auto.AutoState(tmp_path / "auto.json", 600.0)
    facts = {"preset": "demo", "steps_per_second": 1.0, "trials": 0, "trial_minutes": 0.0}
    facts |= {"tune_minutes": 0.0, "final_minutes": 9.0, "tuned": [], "reasons": []}
    state.stages["plan"] = {**facts, "warm_start": "ru-base-small"}
    job = auto.AutoJob(tmp_path, "voice", state, load_config(None), False, ())
    assert job.config().train.warm_start == "ru-base-small"
    state.stages["plan"] = {**facts, "warm_start": ""}
    assert job.config().train.warm_start == ""
    assert job.config().model.attention == "location"  # the preset's: the plan chose none
    state.stages["plan"] = {**facts, "warm_start": "", "attention": "forward"}  # older auto.json
    assert job.config().model.attention == "forward"
    recipe = {"model.attention": "forward", "loss.mel_loss": "l1"}
    state.stages["plan"] = {**facts, "warm_start": "", "recipe": recipe}
    assert (job.config().model.attention, job.config().loss.mel_loss) == ("forward", "l1")


@pytest.mark.parametrize(
    ("from_scratch", "overrides", "recipe"),
    [
        (True, (), SCRATCH_RECIPE),  # random weights: the recipe that speaks sooner
        (False, (), {}),  # the base voice keeps the settings it was trained with
        (
            True,
            ("model.attention = location",),
            {"loss.mel_loss": "l1", "train.learning_rate": 3e-3, "model.encoder_dropout": 0.2},
        ),
        (
            True,
            ("model.attention=location", "loss.mel_loss=mse"),
            {"train.learning_rate": 3e-3, "model.encoder_dropout": 0.2},
        ),
        (
            True,
            ("model.attention=location", "loss.mel_loss=mse", "train.learning_rate=1e-3"),
            {"model.encoder_dropout": 0.2},
        ),
        (
            True,
            (
                "model.attention=location",
                "loss.mel_loss=mse",
                "train.learning_rate=1e-3",
                "model.encoder_dropout=0.5",
            ),
            {},
        ),
    ],
)
def test_the_plan_stage_records_the_recipe_every_model_trains(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    from_scratch: bool,
    overrides: tuple[str, ...],
    recipe: dict[str, str],
) -> None:
    from tacotune.auto import pipeline, plan

    cpu = plan.Hardware(cpu_cores=2, native_bf16=False, gpu="", gpu_memory_gib=0.0)
    monkeypatch.setattr(plan, "detect_hardware", lambda: cpu)
    monkeypatch.setattr(plan, "run_rate", lambda config, prepared, reasons: 2.0)
    state = auto.AutoState(tmp_path / "auto.json", 600.0)
    state.stages["prepare"] = {"rows": 10, "kept": 10, "excluded": 0, "hours": 0.1}
    base = load_config(None, list(overrides))
    job = auto.AutoJob(tmp_path, "voice", state, base, False, overrides, from_scratch)
    facts: dict[str, Any] = {}
    pipeline._plan(job, facts)
    assert facts["recipe"] == recipe
    state.stages["plan"] = json.loads(json.dumps(facts))  # as auto.json keeps it
    config = job.config()
    chosen = load_config("demo.yaml", list(overrides))  # the preset the plan chose, as given
    expected: dict[str, Any] = {"model.attention": chosen.model.attention}
    expected |= {"loss.mel_loss": chosen.loss.mel_loss}
    expected |= {"train.learning_rate": chosen.train.learning_rate}
    expected |= {"model.encoder_dropout": chosen.model.encoder_dropout, **recipe}
    found = (
        config.model.attention,
        config.loss.mel_loss,
        config.train.learning_rate,
        config.model.encoder_dropout,
    )
    assert found == tuple(expected.values())
    assert any(reason.startswith("recipe") for reason in facts["reasons"])


# --- refused before any work: arguments and a damaged auto.json -------------------------------


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one error line of `tacotune auto ARGS`, which must exit 1 without a traceback."""
    from tacotune.cli import main

    capsys.readouterr()
    code = main(["-q", "auto", *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert code == 1 and "Traceback" not in err and len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        (["--budget", "-5"], "--budget must be a positive number of minutes, found -5.0"),
        (["--budget", "0"], "--budget must be a positive number of minutes"),
        (["--budget", "nan"], "--budget must be a positive number of minutes, found nan"),
        (["--budget", "inf"], "--budget must be a positive number of minutes, found inf"),
        (["--budget", "1e308"], "--budget must be a positive number of minutes"),
        (["--workers", "0"], "--workers must be at least 1, found 0"),
        (["--name", "../voice"], "model name '../voice' is not allowed"),
    ],
)
def test_impossible_arguments_are_refused_before_any_work(
    argument: list[str], expected: str, data_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "out"
    assert expected in refused(capsys, str(data_dir), "-o", str(out), *argument)
    assert not out.exists()  # nothing prepared, trained or registered


@pytest.mark.parametrize("folder", [".hidden", "v" * 200, "two words"])
def test_a_data_folder_that_cannot_name_the_voice_asks_for_name_at_once(
    folder: str, tmp_path: Path, capsys: Any
) -> None:
    data, out = tmp_path / folder, tmp_path / "out"
    data.mkdir()
    message = refused(capsys, str(data), "-o", str(out))
    assert "named after the data folder" in message and "--name NAME" in message, message
    assert not out.exists()


def test_a_data_folder_in_any_script_names_the_voice(tmp_path: Path) -> None:
    assert check_arguments(10.0, 1, None, tmp_path / "голос") == "голос"
    assert check_arguments(10.0, 1, "мой_голос", tmp_path / ".hidden") == "мой_голос"


def _state(**changes: Any) -> dict[str, Any]:
    """auto.json after the prepare stage, with `changes`."""
    prepare = {"rows": 12, "kept": 12, "excluded": 0, "hours": 0.01, "seconds": 3.0}
    state = {"budget_seconds": 600.0, "spent_seconds": 3.0, "stages": {"prepare": prepare}}
    return {**state, "context": {"prepare_seconds": 3.0}, **changes}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"budget_seconds": 600, "stages": {', "it is not valid JSON"),
        (b"\xff\xfe{}", "it is not UTF-8 text"),
        ("[600, 0]", "it holds list, not an object"),
        ("[" * 100_000, "nested too deeply"),
        (_state(budget_seconds="600"), "budget_seconds must be a positive number, found '600'"),
        (_state(spent_seconds=-1), "spent_seconds must be a number >= 0, found -1"),
        (_state(stages=[]), "stages and context must be objects"),
        (_state(stages={"plan": {}}), "stages holds ['plan'], but stages finish in the order"),
        (
            _state(stages={"prepare": {**_state()["stages"]["prepare"], "hours": "a lot"}}),
            "stages.prepare.hours must be int/float, found 'a lot'",
        ),
        (_state(stages={"prepare": {"rows": 12}}), "stages.prepare lacks kept"),
        (_state(context={"final_run_id": 7}), "context.final_run_id must be str/null, found 7"),
    ],
    ids=[
        "truncated", "binary", "list", "deep", "budget-text", "negative-spent", "stages-list",
        "stage-order", "fact-type", "missing-fact", "context-type",
    ],
)  # fmt: skip
def test_a_damaged_auto_json_is_one_line_before_any_work(
    content: str | bytes | dict[str, Any],
    expected: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: Any,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if isinstance(content, dict):
        content = json.dumps(content)
    raw = content if isinstance(content, bytes) else content.encode()
    (out / "auto.json").write_bytes(raw)
    message = refused(capsys, str(data_dir), "-o", str(out), "--budget", "10")
    assert f"{out / 'auto.json'} is damaged: " in message and expected in message, message
    assert "new -o directory" in message
    assert [p.name for p in out.iterdir()] == ["auto.json"]  # nothing else written
    assert (out / "auto.json").read_bytes() == raw  # and the file left as it was


def test_a_budget_overrun_that_rounds_to_nothing_is_within_budget() -> None:
    from tacotune.auto.report import _budget_line

    budget = {"spent_minutes": 10.04, "budget_minutes": 10.0}
    assert _budget_line({**budget, "over_minutes": 0.04}).startswith("Within budget: 10.0 of")
    assert "(0.2 min over" in _budget_line({**budget, "over_minutes": 0.2})
