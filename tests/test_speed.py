"""GPU-speed machinery, tested on the CPU: the precision rule, bad steps skipped on the
device with deferred reading, the compiled decoder step and memory buckets against the
eager reference, DataLoader workers, batched free-running decoding."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tacotune.config import Config, load_config
from tacotune.data.dataset import Collate, Item
from tacotune.errors import ConfigError
from tacotune.losses import LossTerms, tacotron2_loss
from tacotune.model import Tacotron2, pad_multiple
from tacotune.supervision.guard import DivergenceGuard
from tacotune.text.symbols import SYMBOLS
from tacotune.train import loop, train
from tacotune.train import session as acoustic
from tacotune.train.compiled import compile_decoder_steps
from tacotune.train.inputs import build_training_data
from tacotune.train.readout import Readout, masked_step, poison_non_finite
from tacotune.train.setup import DeviceFacts, choose_precision, setup_environment

from conftest import TINY, tiny_train

N_MELS = 80

# --- precision ---------------------------------------------------------------------------------

H100 = DeviceFacts("cuda", (9, 0), native_bf16=True)
T4 = DeviceFacts("cuda", (7, 5), native_bf16=False)
SAPPHIRE_RAPIDS = DeviceFacts("cpu", None, native_bf16=True)
OLD_CPU = DeviceFacts("cpu", None, native_bf16=False)


@pytest.mark.parametrize(
    ("facts", "precision", "why"),
    [
        (H100, "tf32", "TF32"),
        (T4, "fp32", "no TF32"),
        (SAPPHIRE_RAPIDS, "bf16", "natively"),
        (OLD_CPU, "fp32", "no native bf16"),
    ],
)
def test_auto_precision_follows_the_documented_rule(
    facts: DeviceFacts, precision: str, why: str
) -> None:
    choice = choose_precision("auto", facts)
    assert choice.precision == precision and why in choice.reason


def test_explicit_precision_is_kept_where_the_device_has_it() -> None:
    assert choose_precision("bf16", H100).precision == "bf16"
    assert choose_precision("fp32", H100).precision == "fp32"  # no TF32 unless asked or auto
    assert choose_precision("tf32", H100).precision == "tf32"


@pytest.mark.parametrize(
    ("requested", "facts", "message"),
    [
        ("tf32", OLD_CPU, "no CUDA device"),
        ("tf32", T4, r"compute capability \(7, 5\)"),
        ("fp16", SAPPHIRE_RAPIDS, "needs a CUDA device"),
    ],
)
def test_a_precision_the_device_lacks_is_a_clear_error(
    requested: str, facts: DeviceFacts, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_precision(requested, facts)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.sync_every=0", "sync_every must be auto or >= 1"),
        ("train.shape_bucket=0", "shape_bucket must be auto or >= 1"),
        ("train.data_workers=-1", "data_workers must be auto or >= 0"),
        ("train.precision=tf32", "tf32 is a CUDA"),
        ("train.compile=reduce-overhead", "needs a CUDA device"),
    ],
)
def test_speed_settings_are_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.device=cpu", override])


def test_cuda_graphs_on_a_machine_without_cuda_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_config(None, ["train.compile=reduce-overhead"])  # device auto: the CPU here
    with pytest.raises(ConfigError, match=r"use train\.compile=default"):
        setup_environment(config.train)


def test_cpu_defaults_read_every_step_and_load_in_process() -> None:
    config = load_config(None, ["train.device=cpu"])
    assert setup_environment(config.train).sync_every == 1


# --- bad steps skipped on the device ----------------------------------------------------------


def test_the_device_verdict_is_the_guards_verdict() -> None:
    config = load_config(None, ["supervision.guard_warmup=5", "supervision.guard_window=10"])
    guard = DivergenceGuard(config.supervision)
    values = [2.0, 2.5, 9.9, 10.0, 10.1, 1e5, math.nan, math.inf, -math.inf, 0.0]
    for history in (0, 10):  # before the relative checks apply, and after
        for _ in range(history - len(guard.losses)):
            guard.check(2.0, 1.0)
        for loss_finite_only in (False, True):
            limits = guard.limits(loss_finite_only)
            for loss in values:
                for grad in values:
                    device = limits.device_verdict(torch.tensor(loss), torch.tensor(grad))
                    twin = DivergenceGuard(config.supervision)
                    twin.load_state_dict(guard.state_dict())
                    host = twin.check(loss, grad, limits=limits)
                    assert bool(device) == host.bad, (history, loss, grad, host.reason)


def _adamw() -> tuple[list[torch.nn.Parameter], torch.optim.AdamW]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2, 3))]
    return params, torch.optim.AdamW(params, lr=0.1, weight_decay=0.1, fused=True)


def test_a_masked_step_leaves_parameters_and_optimizer_state_alone() -> None:
    """Pins torch's private hand-off that masked_step uses (no public API skips a fused
    step on the device): GradScaler sets `optimizer.grad_scale` and `optimizer.found_inf`
    for an optimizer with `_step_supports_amp_scaling`, and the fused AdamW kernel skips
    the update, moments and step count where found_inf is 1. Written against torch 2.13.0
    (what ./run installs); should a torch upgrade change the hand-off, this test fails."""
    assert optimizer_supports_the_hand_off()
    params, optimizer = _adamw()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for good in (True, False, True):
        sum(p.sum() for p in params).backward()
        before = [p.detach().clone() for p in params]
        state = [v.clone() for p in params for v in optimizer.state[p].values()]
        masked_step(optimizer, scaler, torch.tensor(not good))
        changed = [not torch.equal(b, p) for b, p in zip(before, params, strict=True)]
        assert changed == [good, good]
        if not good:
            after = [v for p in params for v in optimizer.state[p].values()]
            assert all(torch.equal(a, b) for a, b in zip(state, after, strict=True))
        optimizer.zero_grad()
    assert int(optimizer.state[params[0]]["step"]) == 2  # the skipped step is not counted


def optimizer_supports_the_hand_off() -> bool:
    _, optimizer = _adamw()
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def test_masked_step_needs_a_fused_optimizer() -> None:
    parameter = torch.nn.Parameter(torch.ones(2))
    plain = torch.optim.AdamW([parameter])
    with pytest.raises(TypeError, match="fused=True"):
        masked_step(plain, torch.amp.GradScaler("cpu", enabled=False), torch.tensor(False))


def test_a_non_finite_loss_poisons_every_gradient_and_a_finite_one_nothing() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    poison_non_finite((weight * 2).sum()).backward()
    assert torch.equal(weight.grad, torch.full((3,), 2.0))
    weight.grad = None
    poison_non_finite((weight * 2).sum() + math.inf).backward()  # the gradient itself is finite
    assert weight.grad is not None and weight.grad.isnan().all()


def test_readout_reads_every_pending_step_in_order_at_once() -> None:
    readout = Readout(every=3)
    limits = DivergenceGuard(load_config(None, []).supervision).limits()
    for step in (1, 2, 3):
        terms = LossTerms(*(torch.tensor(float(step + i)) for i in range(4)))
        readout.add(
            step,
            terms.total,
            torch.tensor(0.5),
            torch.tensor(step == 2),
            limits,
            terms.tensors(),
            {},
        )
        assert readout.due(step) == (step == 3)
    records = readout.read()
    assert [(r.step, r.loss, r.skipped) for r in records] == [
        (1, 1.0, False),
        (2, 2.0, True),
        (3, 3.0, False),
    ]
    assert records[0].scalars == {
        "total": 1.0,
        "mel": 2.0,
        "mel_postnet": 3.0,
        "gate": 4.0,
        "grad_norm": 0.5,
    }
    assert readout.read() == []


def events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_deferred_reading_still_skips_a_non_finite_gradient_and_records_it(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open, real_step, real_read = loop.open_session, acoustic.masked_step, Readout.read
    applied: dict[int, bool] = {}  # step -> did the parameters change
    reads: list[list[int]] = []

    def open_with_a_poisoned_gradient(*args: Any, **kwargs: Any) -> Any:
        session = real_open(*args, **kwargs)
        weight = session.model.postnet.blocks[0].conv.weight
        weight.register_hook(lambda g: g * math.nan if session.state.step == 5 else g)
        session_box.append(session)
        return session

    def watched_step(optimizer: Any, scaler: Any, bad: torch.Tensor) -> None:
        model = session_box[0].model
        before = [p.detach().clone() for p in model.parameters()]
        real_step(optimizer, scaler, bad)
        after = list(model.parameters())
        applied[session_box[0].state.step + 1] = any(
            not torch.equal(b, a) for b, a in zip(before, after, strict=True)
        )

    def watched_read(self: Readout) -> Any:
        records = real_read(self)
        reads.append([r.step for r in records])
        return records

    session_box: list[Any] = []
    monkeypatch.setattr(loop, "open_session", open_with_a_poisoned_gradient)
    monkeypatch.setattr(acoustic, "masked_step", watched_step)
    monkeypatch.setattr(Readout, "read", watched_read)
    result = train(
        tiny_train("train.sync_every=4", "train.max_steps=12", "train.eval_every=12"),
        prepared,
        tmp_path / "run",
    )
    assert result.step == 12
    assert applied[6] is False and all(applied[s] for s in applied if s != 6)
    assert [5, 6, 7, 8] in reads  # step 6 was read three steps later, with the others
    skipped = [e for e in events(tmp_path / "run") if e["event"] == "step_skipped"]
    assert [(e["step"], "non-finite gradient" in e["reason"]) for e in skipped] == [(6, True)]
    finished = events(tmp_path / "run")[-1]
    assert finished["event"] == "finished" and finished["bad_steps"] == 1


@pytest.mark.slow
def test_deferred_reading_rolls_back_after_a_streak(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = acoustic.tacotron2_loss
    count = [0]

    def poisoned(*args: Any, **kwargs: Any) -> LossTerms:
        terms = real(*args, **kwargs)
        count[0] += 1
        if count[0] in (6, 7):
            return LossTerms(terms.total * math.nan, terms.mel, terms.mel_postnet, terms.gate)
        return terms

    monkeypatch.setattr(acoustic, "tacotron2_loss", poisoned)
    config = tiny_train(
        "train.sync_every=4",
        "train.max_steps=12",
        "train.eval_every=4",
        "supervision.max_bad_steps=2",
    )
    result = train(config, prepared, tmp_path / "run")
    kinds = [e["event"] for e in events(tmp_path / "run")]
    assert kinds.count("step_skipped") == 2 and "rollback" in kinds and kinds[-1] == "finished"
    rollback = next(e for e in events(tmp_path / "run") if e["event"] == "rollback")
    assert rollback["to_step"] == 4 and "non-finite loss" in rollback["reason"]
    assert result.step == 12


# --- the compiled step and memory buckets ------------------------------------------------------


def tiny(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def batch(text_lengths: list[int], mel_lengths: list[int], multiple: int) -> Any:
    g = torch.Generator().manual_seed(0)
    items = [
        Item(
            f"u{i}",
            torch.randint(4, len(SYMBOLS), (n,), generator=g),
            torch.randn(N_MELS, t, generator=g),
        )
        for i, (n, t) in enumerate(zip(text_lengths, mel_lengths, strict=True))
    ]
    return Collate(multiple)(items)


def loss_and_grads(config: Config, prepare: Any = None) -> tuple[float, dict[str, torch.Tensor]]:
    """One training forward/backward of a freshly seeded tiny model."""
    b = batch([9, 6, 13], [40, 28, 50], pad_multiple(config.model))
    torch.manual_seed(0)
    model = Tacotron2(config.model, len(SYMBOLS), N_MELS)
    if prepare is not None:
        prepare(model)
    torch.manual_seed(1)
    out = model(b.text, b.text_lengths, b.mel, b.mel_lengths, config.model.reduction_factor)
    total = tacotron2_loss(out, b, config.loss, 0).total
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(total.detach()), grads


def assert_same(
    a: tuple[float, dict[str, torch.Tensor]], b: tuple[float, dict[str, torch.Tensor]]
) -> None:
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.allclose(a[1][name], b[1][name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("option", ["model.ddc=true", "model.gst=true"])
def test_memory_buckets_pad_without_changing_loss_or_gradients(option: str) -> None:
    config = tiny(option, "model.ddc_reduction_factor=4")
    widths: list[int] = []  # the attention memory's width each bucketed forward saw

    def bucketed(model: Tacotron2) -> None:
        compile_decoder_steps(model, load_config(None, ["train.shape_bucket=16"]).train)
        pad = model.decoder._bucketed

        def recorded(memory: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            memory, mask = pad(memory, mask)
            widths.append(memory.shape[1])
            return memory, mask

        model.decoder._bucketed = recorded  # type: ignore[method-assign]

    assert_same(loss_and_grads(config), loss_and_grads(config, bucketed))
    assert widths == [16]  # the longest text, 13 characters, padded to the 16-character bucket


@pytest.mark.slow
def test_the_compiled_step_computes_what_the_eager_one_does() -> None:
    """torch.compile (inductor, default mode) on the CPU: loss within 1e-5 relative and
    every gradient within rtol 1e-4 of the eager reference, dropout on."""
    config = tiny("model.ddc=true", "model.ddc_reduction_factor=4")

    def compiled(model: Tacotron2) -> None:
        compile_decoder_steps(model, load_config(None, ["train.compile=default"]).train)

    from torch._dynamo.utils import counters

    eager = loss_and_grads(config)
    counters.clear()
    assert_same(eager, loss_and_grads(config, compiled))
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled step did run


# --- data workers and free-running decoding ----------------------------------------------------


def test_worker_processes_give_the_same_batches(prepared: Path) -> None:
    from tacotune.data.manifest import load_prepared

    streams = []
    for workers in (0, 2):
        config = tiny_train(f"train.data_workers={workers}", "train.device=cpu")
        data = build_training_data(load_prepared(prepared), config, 0, 1)
        assert data.workers == workers and not data.pin_memory
        stream = data.stream()
        streams.append([next(stream) for _ in range(4)])
    for one, other in zip(*streams, strict=True):
        assert one.ids == other.ids and torch.equal(one.mel, other.mel)
        assert torch.equal(one.text, other.text)


def test_auto_workers_are_none_on_the_cpu(prepared: Path) -> None:
    from tacotune.data.manifest import load_prepared

    data = build_training_data(load_prepared(prepared), tiny_train("train.device=cpu"), 0, 1)
    assert data.workers == 0


def test_checking_for_the_end_every_few_steps_decodes_the_same() -> None:
    config = tiny()
    torch.manual_seed(0)
    model = Tacotron2(config.model, len(SYMBOLS), N_MELS).eval()
    text = torch.randint(4, len(SYMBOLS), (3, 12))
    lengths = torch.tensor([12, 7, 10])
    outs = [
        model.infer(text, lengths, generator=torch.Generator().manual_seed(5), check_every=k)
        for k in (1, 8)
    ]
    for one, other in zip(*outs, strict=True):
        if isinstance(one, torch.Tensor):
            assert one.shape == other.shape and torch.equal(one, other)
