"""The rules of a configuration that involve more than one field, or a range: applied by
`validate(config)` (so every command, a checkpoint's config and `tacotune config` meet the
same rules before any work starts). Each rule adds one message saying what was expected,
what was found and, where it is not obvious, how to fix it."""

from __future__ import annotations

import math
from collections.abc import Callable

from tacotune.config.generators import PRESETS
from tacotune.config.schema import (
    TUNABLE,
    AudioConfig,
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    SupervisionConfig,
    TrainConfig,
    TuningConfig,
    VocoderConfig,
    reduction_factors,
)
from tacotune.errors import ConfigError, short_repr


class Problems(list[str]):
    """The messages of the rules broken so far."""

    def need(self, ok: bool, message: str) -> None:
        """Record `message` unless `ok`."""
        if not ok:
            self.append(message)


def validate(cfg: Config) -> Config:
    """Check rules that involve more than one field; return `cfg` or raise ConfigError."""
    problems = problems_of(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return cfg


def problems_of(cfg: Config) -> list[str]:
    """Every rule `cfg` breaks, one message each (empty: valid)."""
    problems = Problems()
    _audio_and_data(cfg.audio, cfg.data, problems.need)
    _model_and_loss(cfg.model, cfg.loss, problems.need)
    _training(cfg.train, problems.need)
    _supervision(cfg.supervision, problems.need)
    problems += _space_problems(cfg.tuning)
    problems += _vocoder_problems(cfg.vocoder, cfg.audio)
    problems += _bound_problems(cfg)
    return problems


Need = Callable[[bool, str], None]


def _audio_and_data(a: AudioConfig, d: DataConfig, need: Need) -> None:
    need(a.win_length <= a.n_fft, f"audio.win_length ({a.win_length}) must be <= n_fft ({a.n_fft})")
    need(0 < a.hop_length <= a.win_length, "audio.hop_length must be in (0, win_length]")
    need(
        0 <= a.fmin < a.fmax <= a.sample_rate / 2,
        f"audio needs 0 <= fmin < fmax <= sample_rate/2; found fmin={a.fmin}, fmax={a.fmax}, "
        f"sample_rate={a.sample_rate}",
    )
    need(0 < d.min_duration < d.max_duration, "data needs 0 < min_duration < max_duration")
    need(0 <= d.val_fraction < 1, "data.val_fraction must be in [0, 1)")
    need(
        d.min_val_utterances <= d.max_val_utterances,
        "data.min_val_utterances must be <= data.max_val_utterances",
    )
    need(0 <= d.max_excluded_fraction <= 1, "data.max_excluded_fraction must be in [0, 1]")
    need(d.speech_rate_tolerance > 1, "data.speech_rate_tolerance must be > 1 (a factor)")


def _model_and_loss(m: ModelConfig, lo: LossConfig, need: Need) -> None:
    need(m.encoder_dim % 2 == 0, "model.encoder_dim must be even (BiLSTM halves)")
    need(m.encoder_kernel_size % 2 == 1, "model.encoder_kernel_size must be odd")
    need(m.postnet_kernel_size % 2 == 1, "model.postnet_kernel_size must be odd")
    need(m.attention_location_kernel_size % 2 == 1, "attention_location_kernel_size must be odd")
    need(m.reduction_factor >= 1, "model.reduction_factor must be >= 1")
    for name in (
        "encoder_dropout",
        "attention_dropout",
        "prenet_dropout",
        "decoder_dropout",
        "postnet_dropout",
    ):
        need(0 <= getattr(m, name) < 1, f"model.{name} must be in [0, 1)")
    steps = [s for s, _ in m.reduction_schedule]
    need(
        not m.reduction_schedule or (steps[0] == 0 and steps == sorted(set(steps))),
        "model.reduction_schedule must start at step 0 with increasing steps, e.g. "
        "[[0, 4], [2000, 2]]",
    )
    need(all(r >= 1 for _, r in m.reduction_schedule), "reduction_schedule factors must be >= 1")
    need(
        not m.ddc or m.ddc_reduction_factor > max(reduction_factors(m)),
        f"model.ddc_reduction_factor ({m.ddc_reduction_factor}) must exceed every fine-decoder "
        f"reduction factor {sorted(reduction_factors(m))} (the coarse decoder is the coarser one)",
    )
    need(not m.gst or m.gst_dim % m.gst_heads == 0, "model.gst_dim must be divisible by gst_heads")
    need(lo.guided_attn_sigma > 0, "loss.guided_attn_sigma must be > 0")
    need(lo.guided_attn_floor <= lo.guided_attn_weight, "guided_attn_floor must be <= its weight")


def _training(t: TrainConfig, need: Need) -> None:
    need(t.batch_size >= 1, "train.batch_size must be >= 1")
    need(0 < t.min_learning_rate <= t.learning_rate, "need 0 < min_learning_rate <= learning_rate")
    need(t.eval_every >= 1, "train.eval_every must be >= 1")
    need(t.max_steps >= 1, "train.max_steps must be >= 1")
    need(t.grad_clip > 0, "train.grad_clip must be > 0")
    need(
        t.data_workers == "auto" or t.data_workers >= 0,
        f"train.data_workers must be auto or >= 0, found {t.data_workers}",
    )
    need(
        t.sync_every == "auto" or t.sync_every >= 1,
        f"train.sync_every must be auto or >= 1, found {t.sync_every}",
    )
    need(
        t.shape_bucket == "auto" or t.shape_bucket >= 1,
        f"train.shape_bucket must be auto or >= 1 (1: no extra padding), found {t.shape_bucket}",
    )
    need(
        t.compile != "reduce-overhead" or t.device != "cpu",
        "train.compile=reduce-overhead captures CUDA graphs and needs a CUDA device, but "
        "train.device is cpu; use train.compile=default (or off) on the CPU",
    )
    need(
        t.precision != "tf32" or t.device != "cpu",
        "train.precision=tf32 is a CUDA (Ampere or newer) mode, but train.device is cpu; use "
        "fp32 or bf16 on the CPU",
    )
    need(len(t.probe_sentences) >= 1, "train.probe_sentences needs at least one sentence")


def _supervision(sv: SupervisionConfig, need: Need) -> None:
    need(
        sv.free_running_val_utterances >= 1,
        "supervision.free_running_val_utterances must be >= 1 (the voice metric needs them)",
    )
    need(
        0 < sv.voice_ready_ratio <= sv.usable_ratio,
        "supervision needs 0 < voice_ready_ratio <= usable_ratio",
    )
    need(0 < sv.aligned_share <= 1, "supervision.aligned_share must be in (0, 1]")
    need(0 < sv.rollback_lr_factor < 1, "supervision.rollback_lr_factor must be in (0, 1)")
    need(sv.max_bad_steps >= 1, "supervision.max_bad_steps must be >= 1")
    need(
        sv.grad_norm_factor > 1 and sv.loss_spike_factor > 1,
        "supervision.grad_norm_factor and loss_spike_factor must be > 1",
    )
    need(sv.guard_warmup <= sv.guard_window, "supervision.guard_warmup must be <= guard_window")


# Ranges of the settings that size memory: the models, a batch, the processes and the work
# of synthesis. Configs also come inside checkpoints (acoustic and vocoder), which anyone
# can craft: without bounds one number (a billion decoder steps, a million Griffin-Lim
# iterations, a 10**9-channel generator) makes synthesis run or allocate without end. Each
# range holds every real Tacotron2 / HiFi-GAN setup with room to spare. Settings that may
# also be "auto" are checked when they are numbers.
MAX_DIM = 4096  # any layer width (the paper's widest is 1024; HiFi-GAN V1's h_u is 512)
MAX_KERNEL = 255  # any convolution width (the paper's widest: location features, 31)
MAX_LAYERS = 32  # encoder / postnet convolutions (the paper: 3 / 5)
MAX_BATCH = 1024  # utterances or vocoder segments per step (the papers: 64 and 16)
MAX_WORKERS = 256  # processes or threads one setting starts
BOUNDS: dict[str, tuple[float, float]] = {
    "audio.sample_rate": (8000, 192000),  # Hz: telephone speech to studio audio
    "audio.n_fft": (64, 16384),  # 3 ms to 0.7 s at 22050 Hz
    "audio.win_length": (1, 16384),  # <= n_fft
    "audio.hop_length": (1, 16384),  # <= win_length
    "audio.n_mels": (1, 512),  # vocoders use 80 or 128
    "audio.griffin_lim_iters": (1, 1000),  # quality flat beyond ~32; each costs 2 STFTs
    "model.embedding_dim": (1, MAX_DIM),
    "model.encoder_dim": (2, MAX_DIM),
    "model.attention_rnn_dim": (1, MAX_DIM),
    "model.attention_dim": (1, MAX_DIM),
    "model.attention_location_filters": (1, MAX_DIM),
    "model.prenet_dim": (1, MAX_DIM),
    "model.decoder_rnn_dim": (1, MAX_DIM),
    "model.postnet_dim": (1, MAX_DIM),
    "model.gst_dim": (1, MAX_DIM),
    "model.encoder_kernel_size": (1, MAX_KERNEL),
    "model.postnet_kernel_size": (1, MAX_KERNEL),
    "model.attention_location_kernel_size": (1, MAX_KERNEL),
    "model.encoder_conv_layers": (1, MAX_LAYERS),
    "model.postnet_layers": (1, MAX_LAYERS),
    "model.gst_tokens": (1, 1024),
    "model.gst_heads": (1, 64),
    "model.reduction_factor": (1, 16),  # frames per decoder step
    "model.ddc_reduction_factor": (1, 64),
    "model.max_decoder_steps": (1, 10000),  # 10000 steps of r=2: 4 minutes of speech per piece
    "model.max_frames_per_char": (0.1, 100),  # a character takes ~6 frames; 100 is ~1.2 s
    "train.batch_size": (1, MAX_BATCH),
    "train.shape_bucket": (1, 1024),  # characters the attention memory is padded to
    "train.data_workers": (0, MAX_WORKERS),
    "train.threads": (0, MAX_WORKERS),
    "vocoder.generator_channels": (0, MAX_DIM),  # 0: the preset's
    "vocoder.segment_size": (1, 1 << 18),  # samples: 12 s at 22050 Hz (the paper: 8192)
    "vocoder.batch_size": (1, MAX_BATCH),
}


def _bound_problems(cfg: Config) -> list[str]:
    """Every BOUNDS setting outside its range, and reduction-schedule factors above 16."""
    problems = []
    for key, (low, high) in BOUNDS.items():
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if not isinstance(value, str) and not low <= value <= high:  # str: "auto"
            problems.append(f"{key} must be in [{low:g}, {high:g}], found {short_repr(value)}")
    high_r = BOUNDS["model.reduction_factor"][1]
    if any(r > high_r for _, r in cfg.model.reduction_schedule):
        problems.append(f"model.reduction_schedule factors must be <= {high_r:g}")
    return problems


def _space_problems(tuning: TuningConfig) -> list[str]:
    problems = []
    keys = [d.key for d in tuning.space]
    for dim in tuning.space:
        where = f"tuning.space {short_repr(dim.key)}"
        if dim.key not in TUNABLE:
            problems.append(f"{where}: not tunable; tunable settings are {sorted(TUNABLE)}")
        ranged = dim.low is not None and dim.high is not None
        if ranged == bool(dim.choices):
            problems.append(f"{where}: give either low and high, or choices")
        elif ranged and not dim.low < dim.high:  # type: ignore[operator]
            problems.append(f"{where}: low must be below high")
        elif ranged and dim.log and dim.low <= 0:  # type: ignore[operator]
            problems.append(f"{where}: a log-scaled range needs low > 0")
        low, high = BOUNDS.get(dim.key, (-math.inf, math.inf))
        values = (dim.low, dim.high, *dim.choices)
        if any(isinstance(v, int | float) and not low <= v <= high for v in values):
            problems.append(f"{where}: every value must be in [{low:g}, {high:g}]")
        if dim.when and dim.when not in keys:
            problems.append(
                f"{where}: 'when' names {short_repr(dim.when)}, which is not in the space"
            )
    if len(set(keys)) != len(keys):
        problems.append("tuning.space lists a setting twice")
    if tuning.trials < 1 or tuning.trial_max_steps < 1:
        problems.append("tuning.trials and tuning.trial_max_steps must be >= 1")
    categorical = [d.key for d in tuning.space if d.choices]
    if tuning.sampler == "cmaes" and categorical:
        problems.append(
            f"tuning.sampler=cmaes handles continuous ranges only, but {categorical} are "
            "choices; use tuning.sampler=tpe or turn them into ranges"
        )
    if tuning.pruner == "hyperband" and tuning.trial_max_steps <= tuning.prune_after_step:
        problems.append(
            "tuning.pruner=hyperband needs tuning.trial_max_steps above "
            "tuning.prune_after_step (its smallest budget)"
        )
    return problems


def _vocoder_problems(v: VocoderConfig, audio: AudioConfig) -> list[str]:
    problems = []
    upsampling = PRESETS[v.generator].total_upsampling
    if upsampling != audio.hop_length:
        problems.append(
            f"vocoder.generator {v.generator} upsamples by {upsampling}, but audio.hop_length is "
            f"{audio.hop_length}: every mel frame must become hop_length samples; use "
            "hop_length 256 (every HiFi-GAN preset upsamples by 256)"
        )
    if v.segment_size % audio.hop_length or v.segment_size < audio.n_fft:
        problems.append(
            f"vocoder.segment_size ({v.segment_size}) must be a multiple of audio.hop_length "
            f"({audio.hop_length}) and at least audio.n_fft ({audio.n_fft}), e.g. 8192"
        )
    if not all(0 <= b < 1 for b in v.adam_betas):
        problems.append(f"vocoder.adam_betas must be in [0, 1), found {list(v.adam_betas)}")
    if not v.grad_norm_ceiling > 0:
        problems.append(f"vocoder.grad_norm_ceiling must be > 0, found {v.grad_norm_ceiling}")
    if not (v.learning_rate > 0 and 0 < v.lr_decay <= 1):
        problems.append("vocoder needs learning_rate > 0 and 0 < lr_decay <= 1")
    if min(v.feature_matching_weight, v.mel_weight, v.weight_decay) < 0:
        problems.append("vocoder loss weights and weight_decay must be >= 0")
    if min(v.batch_size, v.max_steps, v.eval_every, v.checkpoint_every, v.eval_utterances) < 1:
        problems.append(
            "vocoder.batch_size, max_steps, eval_every, checkpoint_every and eval_utterances "
            "must be >= 1"
        )
    halvings = 2 ** len(PRESETS[v.generator].upsample_rates)
    if v.generator_channels < 0 or v.generator_channels % halvings:
        problems.append(
            f"vocoder.generator_channels ({v.generator_channels}) must be 0 (the preset's) or a "
            f"positive multiple of {halvings}: {v.generator} halves the channels "
            f"{len(PRESETS[v.generator].upsample_rates)} times"
        )
    if v.discriminator_divisor not in (1, 2, 4, 8, 16, 32):
        problems.append(
            f"vocoder.discriminator_divisor must be 1, 2, 4, 8, 16 or 32, found "
            f"{v.discriminator_divisor}"
        )
    return problems
