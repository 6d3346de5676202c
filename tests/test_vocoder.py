"""HiFi-GAN building blocks: shapes, losses, a short fit, the segment data, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.nn.utils import parametrize

from tacotune.audio import SILENCE_LOG_MEL, MelSpectrogram, pcm16_to_float, read_pcm16
from tacotune.checkpoint import save_checkpoint
from tacotune.config import AudioConfig, Config, VocoderConfig, load_config
from tacotune.data.manifest import ManifestEntry, PreparedDataset, load_prepared
from tacotune.data.segments import SegmentDataset
from tacotune.errors import AudioError, CheckpointError, ConfigError, DatasetError
from tacotune.vocoder.discriminators import Discriminator, DiscriminatorOutput
from tacotune.vocoder.hifigan import PRESETS, Generator, GeneratorSpec, build_generator
from tacotune.vocoder.losses import discriminator_loss, generator_loss, mel_loss
from tacotune.vocoder.neural import HifiGanVocoder, vocoder_payload

from conftest import speechlike

AUDIO = AudioConfig()
HOP = AUDIO.hop_length
# a generator small enough to fit one segment in seconds (V3's layout, 32 channels)
TINY_SPEC = GeneratorSpec(32, (8, 8, 4), (16, 16, 8), 2, (3,), ((1, 2),))


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions on a busy 2-core machine run ~10x faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def discriminator() -> Discriminator:
    """The full MPD + MSD (70M parameters), built once."""
    torch.manual_seed(0)
    return Discriminator()


def _mel_of(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    audio = torch.as_tensor(samples, dtype=torch.float32)
    return MelSpectrogram(AUDIO)(audio)


# --- generator and discriminators ---------------------------------------------------------


# Kong et al. 2020, Table 1: 13.92M (V1), 0.92M (V2), 1.46M (V3) generator parameters
PAPER_SIZES = {"v1": 13.93, "v2": 0.93, "v3": 1.46}  # millions, without weight norm


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_generator_turns_each_frame_into_hop_samples(preset: str) -> None:
    torch.manual_seed(0)
    generator = build_generator(preset, AUDIO.n_mels, HOP).eval()
    mel = torch.randn(2, AUDIO.n_mels, 3)
    with torch.no_grad():
        audio = generator(mel)
        assert audio.shape == (2, 1, 3 * HOP)
        assert audio.abs().max() < 1  # tanh output
        folded = generator.remove_weight_norm()(mel)
        assert not any(parametrize.is_parametrized(m) for m in generator.modules())
        torch.testing.assert_close(folded, audio, rtol=0, atol=1e-5)
        planar = generator.to_channels_last_2d()(mel)
    assert not any(isinstance(m, torch.nn.Conv1d) for m in generator.modules())
    torch.testing.assert_close(planar, audio, rtol=0, atol=1e-5)
    size = sum(p.numel() for p in generator.parameters()) / 1e6
    assert round(size, 2) == PAPER_SIZES[preset]


def test_upsampling_must_equal_the_hop() -> None:
    with pytest.raises(ConfigError, match=r"upsamples by 8 x 8 x 4 = 256 .* hop of 300"):
        build_generator("v3", AUDIO.n_mels, 300)
    with pytest.raises(ConfigError, match=r"vocoder.generator v1 upsamples by 256, but audio"):
        load_config(None, ["audio.hop_length=200"])
    with pytest.raises(ConfigError, match=r"vocoder.segment_size \(8000\) must be a multiple"):
        load_config(None, ["vocoder.segment_size=8000"])
    bad_kernel = dataclasses.replace(TINY_SPEC, upsample_kernel_sizes=(16, 15, 8))
    with pytest.raises(ConfigError, match="k - u even"):
        Generator(bad_kernel, AUDIO.n_mels, HOP)


def test_presets_change_only_the_generator() -> None:
    for name in ("v1", "v2", "v3"):
        config = load_config(f"hifigan_{name}")
        assert config.vocoder == dataclasses.replace(VocoderConfig(), generator=name)
        assert config.audio == Config().audio


@pytest.mark.slow
def test_validating_a_vocoder_config_does_not_import_torch() -> None:
    code = (
        "import sys, tacotune.config as c; c.load_config('hifigan_v3'); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "False"


def test_discriminators_return_logits_and_features_per_sub_discriminator(
    discriminator: Discriminator,
) -> None:
    with torch.no_grad():
        out = discriminator(torch.randn(2, 1, 2048) * 0.1)
    assert len(out.logits) == len(out.features) == 5 + 3
    assert all(logits.shape[0] == 2 and logits.dim() == 2 for logits in out.logits)
    assert [len(maps) for maps in out.features] == [6] * 5 + [8] * 3
    assert [maps[0].shape[-1] for maps in out.features[:5]] == [2, 3, 5, 7, 11]  # the periods
    # the three scales see the audio pooled 0, 1 and 2 times
    assert [maps[0].shape[-1] for maps in out.features[5:]] == [2048, 1025, 513]
    first_scale = discriminator.msd.discriminators[0].convs[0]
    assert parametrize.is_parametrized(first_scale, "weight")
    assert "_u" in dict(first_scale.parametrizations.weight[0].named_buffers())  # spectral norm


# --- losses -------------------------------------------------------------------------------


def _verdict(value: float, batch: int = 2) -> DiscriminatorOutput:
    return DiscriminatorOutput(
        [torch.full((batch, 7), value)] * 3, [[torch.full((batch, 4, 5), value)] * 2] * 3
    )


def test_lsgan_losses_on_perfect_and_fooled_discriminators() -> None:
    perfect = discriminator_loss(real=_verdict(1.0), fake=_verdict(0.0))
    assert perfect.total == 0
    fooled = discriminator_loss(real=_verdict(0.0), fake=_verdict(1.0))
    assert (fooled.real, fooled.fake, fooled.total) == (3.0, 3.0, 6.0)  # 3 sub-discriminators
    audio = torch.randn(2, 1, 2048) * 0.1
    mel = MelSpectrogram(AUDIO)
    winning = generator_loss(_verdict(0.5), _verdict(1.0), audio, audio, mel, VocoderConfig())
    # feature matching: 3 sub-discriminators x 2 layers x |0.5 - 1|
    assert (winning.adversarial, winning.feature_matching, winning.mel) == (0.0, 3.0, 0.0)
    assert winning.total == 2.0 * 3.0  # weighted by lambda_fm = 2


def test_mel_term_is_the_l1_of_the_acoustic_models_mels() -> None:
    real = torch.from_numpy(speechlike(0.2)[: 16 * HOP]).reshape(1, 1, -1)
    fake = real * 0.5
    expected = (_mel_of(real[0, 0]) - _mel_of(fake[0, 0])).abs().mean()
    torch.testing.assert_close(mel_loss(real, fake, MelSpectrogram(AUDIO)), expected)
    with pytest.raises(ValueError, match="same shape"):
        mel_loss(real, fake[..., :-1], MelSpectrogram(AUDIO))


def _reaches(term: torch.Tensor, module: torch.nn.Module) -> bool:
    """Whether `term` has a non-zero gradient on some parameter of `module`."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_every_loss_term_trains_its_network(discriminator: Discriminator) -> None:
    torch.manual_seed(0)
    generator = Generator(TINY_SPEC, AUDIO.n_mels, HOP)
    real = torch.from_numpy(speechlike(0.2)[: 4 * HOP]).reshape(1, 1, -1)
    fake = generator(_mel_of(real[0, 0])[None])
    mel, config = MelSpectrogram(AUDIO), VocoderConfig()
    g_terms = generator_loss(discriminator(real), discriminator(fake), real, fake, mel, config)
    for name in ("adversarial", "feature_matching", "mel"):
        assert _reaches(getattr(g_terms, name), generator), name
    expected = g_terms.adversarial + 2 * g_terms.feature_matching + 45 * g_terms.mel
    torch.testing.assert_close(g_terms.total, expected)
    d_terms = discriminator_loss(discriminator(real), discriminator(fake.detach()))
    for name in ("real", "fake"):
        assert _reaches(getattr(d_terms, name), discriminator), name
    assert not _reaches(d_terms.total, generator)  # the generator's audio was detached
    assert set(g_terms.scalars()) == {"g_total", "g_adversarial", "g_feature_matching", "g_mel"}
    assert set(d_terms.scalars()) == {"d_total", "d_real", "d_fake"}


@pytest.mark.slow
def test_mel_l1_alone_fits_one_segment() -> None:
    torch.manual_seed(0)
    generator = Generator(TINY_SPEC, AUDIO.n_mels, HOP)
    real = torch.from_numpy(speechlike(0.5)[: 16 * HOP]).reshape(1, 1, -1)
    mel_in, mel = _mel_of(real[0, 0])[None], MelSpectrogram(AUDIO)
    optimizer = torch.optim.AdamW(generator.parameters(), 5e-3, betas=(0.8, 0.99))
    losses = []
    for _ in range(150):
        loss = mel_loss(real, generator(mel_in), mel)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # from silence-like output (L1 ~ 8) to well below the ~0.6 of noise at the right level
    assert losses[0] > 5 and np.mean(losses[-10:]) < 0.45, (losses[0], losses[-10:])


# --- prepared audio and segments ----------------------------------------------------------


def test_prepare_caches_the_audio_of_every_mel_exactly(prepared: Path) -> None:
    data = load_prepared(prepared)
    mel = MelSpectrogram(data.config.audio)
    for entry in data.entries:
        pcm, rate = read_pcm16(prepared / entry.trimmed_audio_path)
        assert rate == data.config.audio.sample_rate and len(pcm) == entry.n_frames * HOP
        cached = torch.from_numpy(np.load(prepared / entry.mel_path))
        assert torch.equal(mel(torch.from_numpy(pcm16_to_float(pcm))), cached), entry.id
    assert (prepared / "audio").is_dir()
    assert (
        "audio/" in json.loads((prepared / "report.json").read_text())["measurement"]["audio_cache"]
    )


def _segments(data: PreparedDataset, size: int | None, **kwargs: Any) -> SegmentDataset:
    return SegmentDataset(data.split("train"), data.root, data.config.audio, size, **kwargs)


def _whole(data: PreparedDataset, entry: ManifestEntry) -> tuple[np.ndarray, np.ndarray]:
    pcm, _ = read_pcm16(data.root / entry.trimmed_audio_path)
    return pcm16_to_float(pcm), np.load(data.root / entry.mel_path)


def test_a_segment_is_a_frame_aligned_window_of_audio_and_mel(prepared: Path) -> None:
    data = load_prepared(prepared)
    dataset = _segments(data, 16 * HOP, seed=3)
    starts = set()
    for index, entry in enumerate(dataset.entries):
        item = dataset[index]
        assert item.audio.shape == (16 * HOP,) and item.mel.shape == (80, 16)
        audio, mel = _whole(data, entry)
        start = next(
            f
            for f in range(entry.n_frames - 15)
            if np.array_equal(audio[f * HOP :][:4096], item.audio)
        )
        starts.add(start)
        assert np.array_equal(mel[:, start : start + 16], item.mel.numpy())
        # the mel of the window itself agrees away from its edges (STFT padding)
        torch.testing.assert_close(
            _mel_of(item.audio)[:, 2:-2], item.mel[:, 2:-2], atol=1e-4, rtol=0
        )
    assert len(starts) > 1  # windows are drawn, not always the first frames


def test_segments_are_reproducible_per_seed_and_epoch(prepared: Path) -> None:
    data = load_prepared(prepared)
    first, again, other = (_segments(data, 8 * HOP, seed=s) for s in (1, 1, 2))

    def windows(dataset: SegmentDataset) -> list[np.ndarray]:
        return [dataset[i].audio.numpy() for i in range(len(dataset))]

    assert all(np.array_equal(a, b) for a, b in zip(windows(first), windows(again), strict=True))
    assert not all(
        np.array_equal(a, b) for a, b in zip(windows(first), windows(other), strict=True)
    )
    before = windows(first)
    first.set_epoch(1)
    assert not all(np.array_equal(a, b) for a, b in zip(before, windows(first), strict=True))


def test_short_clips_are_padded_with_silence(prepared: Path) -> None:
    data = load_prepared(prepared)
    long = 1024 * HOP  # 11.9 s, longer than every clip
    item, entry = _segments(data, long)[0], data.split("train")[0]
    audio, mel = _whole(data, entry)
    frames = entry.n_frames
    assert item.audio.shape == (long,) and item.mel.shape == (80, 1024)
    assert (
        np.array_equal(item.audio[: frames * HOP], audio) and not item.audio[frames * HOP :].any()
    )
    assert np.array_equal(item.mel[:, :frames], mel)
    assert (item.mel[:, frames:] == SILENCE_LOG_MEL).all()
    whole = _segments(data, None)[0]
    assert np.array_equal(whole.audio, audio) and np.array_equal(whole.mel, mel)


def test_mels_from_another_directory(prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(prepared)
    entries = data.split("train")
    for entry in entries:  # "teacher-forced" mels: here the cached ones shifted by 1
        np.save(tmp_path / f"{entry.id}.npy", np.load(prepared / entry.mel_path) + 1)
    item = _segments(data, 8 * HOP, seed=5, mel_dir=tmp_path)[0]
    reference = _segments(data, 8 * HOP, seed=5)[0]
    assert torch.equal(item.audio, reference.audio)
    assert torch.equal(item.mel, reference.mel + 1)
    first = entries[0]
    np.save(tmp_path / f"{first.id}.npy", np.zeros((80, first.n_frames + 2), np.float32))
    (tmp_path / f"{entries[1].id}.npy").unlink()
    with pytest.raises(DatasetError, match=r"2 vocoder inputs do not match") as error:
        _segments(data, 8 * HOP, mel_dir=tmp_path)
    assert f"has shape (80, {first.n_frames + 2}), expected (80, {first.n_frames})" in str(
        error.value
    )
    assert f"{entries[1].id}.npy is missing" in str(error.value)


def _copy_prepared(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    return copy


def test_truncated_cached_audio_is_a_clear_error(prepared: Path, tmp_path: Path) -> None:
    copy = _copy_prepared(prepared, tmp_path)
    data = load_prepared(copy)
    entry = data.split("train")[0]
    pcm, rate = read_pcm16(copy / entry.trimmed_audio_path)
    sf.write(copy / entry.trimmed_audio_path, pcm[:-100], rate, subtype="PCM_16")
    with pytest.raises(
        DatasetError,
        match=rf"(?s)has {len(pcm) - 100} samples, expected .*\nrun `tacotune prepare`",
    ):
        _segments(data, 8 * HOP)


def test_a_directory_prepared_without_audio_asks_for_prepare_again(
    prepared: Path, tmp_path: Path
) -> None:
    copy = _copy_prepared(prepared, tmp_path)
    manifest = copy / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    old = "".join(
        json.dumps({k: v for k, v in row.items() if k != "trimmed_audio_path"}) + "\n"
        for row in rows
    )
    manifest.write_text(old, encoding="utf-8")
    with pytest.raises(DatasetError, match=r"missing \['trimmed_audio_path'\].*prepare` again"):
        load_prepared(copy)


# --- the inference vocoder and its checkpoint ---------------------------------------------


def _payload(*overrides: str) -> tuple[dict[str, Any], Generator]:
    torch.manual_seed(0)
    config = load_config(None, ["vocoder.generator=v3", *overrides])
    generator = build_generator("v3", config.audio.n_mels, config.audio.hop_length)
    return vocoder_payload(generator, config), generator


def test_vocoder_checkpoint_round_trip(tmp_path: Path) -> None:
    payload, generator = _payload()
    save_checkpoint(tmp_path / "vocoder.pt", {**payload, "step": 7})
    vocoder = HifiGanVocoder.load(tmp_path / "vocoder.pt", expected_audio=AUDIO)
    mel = torch.randn(80, 12)
    audio = vocoder(mel)
    assert vocoder.sample_rate == 22050 and audio.dtype == np.float32 and audio.shape == (12 * HOP,)
    with torch.no_grad():
        expected = generator.eval()(mel[None])[0, 0].numpy()
    np.testing.assert_allclose(audio, expected, atol=1e-5)
    with pytest.raises(AudioError, match=r"expects a \(80, T\) mel, found \(40, 12\)"):
        vocoder(torch.randn(40, 12))


def _with(payload: dict[str, Any], section: str, **values: Any) -> dict[str, Any]:
    return {**payload, section: {**payload[section], **values}}


def _good() -> dict[str, Any]:
    return _payload()[0]


BAD_PAYLOADS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "other sample rate": (
        lambda: _with(_good(), "audio", sample_rate=16000),
        r"sample_rate 16000 \(expected 22050\)",
    ),
    "other n_mels": (lambda: _payload("audio.n_mels=40")[0], r"n_mels 40 \(expected 80\)"),
    "other hop": (
        lambda: _with(_good(), "audio", hop_length=128),
        "upsamples by 256, but audio.hop_length is 128",
    ),
    "wrong generator": (
        lambda: _with(_good(), "vocoder_config", generator="v2"),
        "weights do not fit HiFi-GAN v2",
    ),
    "not a vocoder": (lambda: {"config": {}, "model": {}}, "not a HiFi-GAN vocoder checkpoint"),
    "bad config value": (
        lambda: _with(_good(), "vocoder_config", generator="v9"),
        "invalid vocoder config",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_mismatched_or_corrupt_vocoder_checkpoints_fail_clearly(case: str, tmp_path: Path) -> None:
    build, message = BAD_PAYLOADS[case]
    save_checkpoint(tmp_path / "vocoder.pt", build())
    with pytest.raises(CheckpointError, match=message):
        HifiGanVocoder.load(tmp_path / "vocoder.pt", expected_audio=AUDIO)


def test_truncated_vocoder_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    payload, _ = _payload()
    save_checkpoint(tmp_path / "vocoder.pt", payload)
    data = (tmp_path / "vocoder.pt").read_bytes()
    (tmp_path / "vocoder.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a tacotune checkpoint or is damaged"):
        HifiGanVocoder.load(tmp_path / "vocoder.pt")
