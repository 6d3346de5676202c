"""The configuration schema: nested frozen dataclasses, one comment per field.

Defaults are the paper-size Tacotron2 (`tacotune/configs/base.yaml` is generated from
them and a test keeps the two identical). Experiments override a few fields in
a small YAML file (the preset `tacotune/configs/demo.yaml`) or on the command line.
Cross-field rules: `config/rules.py`'s `validate(config)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class AudioConfig:
    """Waveform and mel-spectrogram settings (HiFi-GAN compatible by default)."""

    sample_rate: int = 22050  # Hz; audio is resampled to this rate
    n_fft: int = 1024  # STFT size in samples
    hop_length: int = 256  # samples between mel frames (11.6 ms at 22050 Hz)
    win_length: int = 1024  # Hann window length in samples
    n_mels: int = 80  # mel bands
    fmin: float = 0.0  # lowest mel frequency, Hz
    fmax: float = 8000.0  # highest mel frequency, Hz
    trim_silence: bool = True  # cut leading/trailing silence before computing mels
    trim_top_db: float = 40.0  # trim: frames quieter than peak minus this many dB are silence
    griffin_lim_iters: int = 32  # Griffin-Lim iterations (mel -> audio); bench/griffin_lim.py
    griffin_lim_power: float = 1.2  # magnitude exponent before Griffin-Lim (sharpens harmonics)


@dataclass(frozen=True)
class TextConfig:
    """Russian text frontend: normalization, stress and the symbol table."""

    stress: Literal["auto", "manual", "off"] = "auto"  # auto: silero-stress fills missing marks
    stress_dictionary: str = ""  # optional file of `word|w+ord` lines; beats automatic stress
    latin: Literal["spell", "report"] = "spell"  # Latin letters: read out by name, or report them


@dataclass(frozen=True)
class DataConfig:
    """Dataset validation thresholds and the train/validation split."""

    min_duration: float = 0.5  # seconds; shorter clips are excluded (too_short)
    max_duration: float = 15.0  # seconds; longer clips are excluded (too_long), never truncated
    max_text_length: int = 300  # model-input characters; longer texts are excluded (text_too_long)
    silence_db: float = -50.0  # RMS in dBFS below which a clip counts as silent
    max_clipped_fraction: float = 0.001  # share of samples at full scale that counts as clipping
    speech_rate_tolerance: float = 2.0  # chars/s further than this factor from the median: outlier
    val_fraction: float = 0.05  # share of utterances held out for validation
    min_val_utterances: int = 2  # at least this many validation utterances
    max_val_utterances: int = 200  # at most this many validation utterances
    max_excluded_fraction: float = 0.2  # prepare fails when more than this share is excluded
    workers: int = 2  # processes that analyze audio during `prepare`


@dataclass(frozen=True)
class ModelConfig:
    """Tacotron2 sizes. Defaults are the paper's (Shen et al. 2018, ~28M parameters)."""

    embedding_dim: int = 512  # character embedding size
    encoder_conv_layers: int = 3  # encoder convolutions before the BiLSTM
    encoder_kernel_size: int = 5  # encoder convolution width, characters
    encoder_dim: int = 512  # encoder channels; the BiLSTM has encoder_dim/2 units per direction
    encoder_dropout: float = 0.5  # dropout after each encoder convolution
    attention_rnn_dim: int = 1024  # attention LSTM units
    attention: Literal["location", "forward"] = "location"  # mechanism (model/attention/)
    attention_dim: int = 128  # attention query/key projection size
    attention_location_filters: int = 32  # location-feature convolution filters
    attention_location_kernel_size: int = 31  # location-feature convolution width
    attention_dropout: float = 0.1  # dropout on the attention LSTM state
    prenet_dim: int = 256  # width of both prenet layers
    prenet_dropout: float = 0.5  # prenet dropout, active in training AND inference
    decoder_rnn_dim: int = 1024  # decoder LSTM units
    decoder_dropout: float = 0.1  # dropout on the decoder LSTM state
    postnet_dim: int = 512  # postnet channels
    postnet_kernel_size: int = 5  # postnet convolution width, frames
    postnet_layers: int = 5  # postnet convolutions
    postnet_dropout: float = 0.5  # dropout after each postnet convolution
    reduction_factor: int = 2  # mel frames predicted per decoder step (r)
    reduction_schedule: tuple[tuple[int, int], ...] = ()  # gradual training: ((step, r), ...)
    ddc: bool = False  # double-decoder consistency: also train a coarse decoder
    ddc_reduction_factor: int = 6  # r of the coarse decoder
    gst: bool = False  # global style tokens from a reference mel
    gst_tokens: int = 10  # number of style tokens
    gst_heads: int = 8  # style-token attention heads
    gst_dim: int = 256  # style embedding size, added to the encoder output
    ctc: bool = False  # CTC alignment head on decoder outputs (the predecessor's use_mmi)
    max_decoder_steps: int = 1000  # inference hard cap, in decoder steps
    max_frames_per_char: float = 20.0  # inference cap per input character, in mel frames
    gate_threshold: float = 0.5  # stop probability that ends inference
    end_hold_frames: int = 20  # inference also ends after attention held the last symbol this long


@dataclass(frozen=True)
class LossConfig:
    """Loss terms and weights; every term is masked to the real lengths."""

    mel_loss: Literal["l1", "mse"] = "mse"  # distance between predicted and target mels
    gate_pos_weight: float = 5.0  # BCE weight of the rare "stop" frames
    guided_attn: bool = True  # penalize attention far from the diagonal
    guided_attn_sigma: float = 0.2  # width of the allowed band (fraction of the utterance)
    guided_attn_weight: float = 10.0  # initial guided-attention weight
    guided_attn_half_life: int = 2000  # steps in which the weight halves
    guided_attn_floor: float = 1.0  # the weight never decays below this
    ddc_weight: float = 1.0  # L1 between the fine and upsampled coarse attention (DDC only)
    ctc_weight: float = 0.1  # weight of the CTC alignment term (model.ctc only)


@dataclass(frozen=True)
class TrainConfig:
    """Optimization and the training loop."""

    seed: int = 1234  # seeds Python, NumPy and torch; same seed + data = same run on CPU
    batch_size: int = 32  # utterances per step (per process under DDP)
    learning_rate: float = 1e-3  # peak AdamW learning rate, reached after warmup
    min_learning_rate: float = 1e-5  # the decay never goes below this
    warmup_steps: int = 1000  # linear warmup from 0 to learning_rate
    lr_half_life: int = 20000  # steps after warmup in which the learning rate halves
    weight_decay: float = 1e-6  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # max global norm of the UNSCALED gradients
    max_steps: int = 100000  # optimizer steps before training ends
    max_minutes: float = 0.0  # wall-clock budget; 0 means none
    warm_start: str = ""  # start a new run from these weights: "base" (the shipped base voice
    # that fits this model, tacotune/voices), a base voice's name, or a checkpoint path; "":
    # random initialization. Ignored on --resume (the run's own weights win)
    mel_mean_init: bool = True  # from random weights, every decoder frame starts at the
    # training mels' mean log-mel (its projection's bias), not at 0, and the postnet's residual
    # at 0, not at noise (its last BatchNorm scale) (bench/time_to_voice.py)
    eval_every: int = 500  # steps between evaluations (and checkpoints)
    keep_checkpoints: int = 3  # step checkpoints kept besides last.pt and best.pt
    precision: Literal["auto", "fp32", "tf32", "bf16", "fp16"] = "auto"  # tf32: fp32 tensors,
    # TF32 matmuls/convolutions (CUDA, Ampere+); auto: see train/setup.py (tf32 on such GPUs,
    # bf16 on CPUs with native bf16, else fp32)
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    data_workers: int | Literal["auto"] = "auto"  # DataLoader worker processes; 0 loads mels
    # in the training process; auto: 2 when training on CUDA, else 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    compile: Literal["off", "default", "reduce-overhead"] = "off"  # torch.compile the decoder
    # step (default: fused kernels; reduce-overhead: + CUDA graphs, CUDA only); off: eager
    sync_every: int | Literal["auto"] = "auto"  # steps between reading the loss and gradient
    # norm on the host (bad steps are skipped on the device meanwhile); auto: 1 on CPU, 16 on CUDA
    shape_bucket: int | Literal["auto"] = "auto"  # pad the attention memory to a multiple
    # of this many characters (masked: same loss), so that a compiled decoder step sees few
    # shapes; auto: 16 when train.compile is on, else 1 (no padding)
    probe_sentences: tuple[str, ...] = (  # synthesized free-running at every evaluation
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "В две тысячи двадцать четвёртом году замок был закрыт.",
        "Привет! Как дела?",
    )


@dataclass(frozen=True)
class SupervisionConfig:
    """Evaluation, the composite score, early stopping and the divergence guard."""

    score_alignment_weight: float = 0.5  # score = voice metric + this * (1 - attention quality)
    free_running_val_utterances: int = 8  # validation utterances decoded free-running and
    # compared with their recordings: the voice metric (free/mcd_ratio) is their mean
    voice_ready_ratio: float = 0.6  # event voice_ready when free/mcd_ratio first reaches this
    usable_ratio: float = 0.9  # above this voice metric a model is no voice (chance is ~1)
    patience: int = (
        10  # evaluations without improving the score by min_delta before stopping; 0: off
    )
    min_delta: float = 0.0  # the smallest score decrease that counts as an improvement
    aligned_share: float = 1.0  # share of free-running utterances aligned for "the run is aligned"
    align_by_step: int = 0  # stop (reason no_alignment) if not aligned by this step; 0: off
    max_bad_steps: int = 5  # consecutive bad (skipped) steps that trigger a rollback
    grad_norm_ceiling: float = 1e4  # a step whose unscaled gradient norm exceeds this is bad
    grad_norm_factor: float = 20.0  # ... as is one above this many times the running median
    loss_spike_factor: float = 5.0  # a loss above this many times the running median is bad
    guard_window: int = 100  # steps in the running medians of the loss and gradient norm
    guard_warmup: int = 20  # steps of history before the relative checks apply
    max_rollbacks: int = 3  # rollbacks before training gives up with TrainingDiverged
    rollback_lr_factor: float = 0.5  # each rollback multiplies the learning rate by this
    debug_every: int = 0  # steps between debug reports in debug/; 0: only on guard events


@dataclass(frozen=True)
class SearchDimension:
    """One tuned setting: a range (low..high, optionally log-scaled) or a list of choices."""

    key: str  # the config key it sets, e.g. train.learning_rate (one of TUNABLE)
    low: float | None = None  # lower bound of a range (integer settings get integer ranges)
    high: float | None = None  # upper bound of the range
    log: bool = False  # sample the range on a log scale
    choices: tuple[int | float | bool | str, ...] = ()  # a list of values instead of a range
    when: str = ""  # sample only when this boolean setting is true in the trial (e.g. model.ddc)


def _range(key: str, low: float, high: float, log: bool = False, when: str = "") -> SearchDimension:
    return SearchDimension(key, low, high, log, (), when)


def _choice(key: str, *choices: int | float | bool | str) -> SearchDimension:
    return SearchDimension(key, choices=choices)


# Settings a study may tune: tests/test_tuning.py proves that each one changes the model, the
# loss, the optimizer or the batches (batch size and clipping through real training steps).
# Anything else is rejected by rules.validate().
TUNABLE = frozenset(
    {
        "train.learning_rate",
        "train.batch_size",
        "train.warmup_steps",
        "train.grad_clip",
        "train.weight_decay",
        "train.lr_half_life",
        "loss.guided_attn_weight",
        "loss.guided_attn_sigma",
        "loss.guided_attn_half_life",
        "loss.gate_pos_weight",
        "loss.ddc_weight",
        "model.reduction_factor",
        "model.prenet_dropout",
        "model.attention_dropout",
        "model.decoder_dropout",
        "model.ddc",
    }
)

DEFAULT_SPACE = (
    _range("train.learning_rate", 3e-4, 3e-3, log=True),
    _choice("train.batch_size", 16, 32),
    _range("train.warmup_steps", 200, 2000, log=True),
    _range("train.grad_clip", 0.3, 5.0, log=True),
    _range("loss.guided_attn_weight", 2.0, 30.0, log=True),
    _range("loss.guided_attn_sigma", 0.1, 0.4),
    _range("loss.guided_attn_half_life", 500, 20000, log=True),
    _range("loss.gate_pos_weight", 1.0, 20.0, log=True),
    _choice("model.reduction_factor", 2, 3, 4),
    _range("model.prenet_dropout", 0.3, 0.6),
    _range("model.attention_dropout", 0.0, 0.2),
    _choice("model.ddc", False, True),
    _range("loss.ddc_weight", 0.1, 2.0, log=True, when="model.ddc"),
)


@dataclass(frozen=True)
class TuningConfig:
    """The hyperparameter search run by `tacotune tune` and `tacotune auto`."""

    trials: int = 20  # the study aims for this many finished (complete/pruned/failed) trials
    trial_max_steps: int = 5000  # step budget of one trial
    trial_max_minutes: float = 0.0  # wall-clock budget of one trial; 0: none
    sampler: Literal["tpe", "cmaes", "random"] = "tpe"  # tpe is multivariate TPE
    pruner: Literal["median", "patient", "hyperband", "none"] = "median"  # stops weak trials
    prune_after_step: int = 2000  # never prune before this step: attention needs time to align
    startup_trials: int = 3  # finished trials before the sampler models and the pruner compares
    patience: int = 2  # evaluations a "patient" pruner waits after the median says prune
    seed: int = 0  # sampler seed
    heartbeat_seconds: float = 30.0  # a running trial's worker checks in this often
    grace_seconds: float = 120.0  # ... and is presumed dead after this long without a check-in
    retries: int = 1  # times a trial whose worker died is queued again
    space: tuple[SearchDimension, ...] = DEFAULT_SPACE  # what is searched (see TUNABLE)


@dataclass(frozen=True)
class TrackingConfig:
    """Where a run's numbers go besides metrics.jsonl and events.jsonl."""

    tensorboard: bool = True  # scalars, alignment/mel figures and audio under tensorboard/
    log_every: int = 10  # steps between training scalars in TensorBoard
    mlflow: bool = False  # also log to MLflow (tune and auto always do)
    mlflow_uri: str = ""  # tracking URI; empty: sqlite:///<output directory>/mlflow.db
    mlflow_experiment: str = "tacotune"  # MLflow experiment name


@dataclass(frozen=True)
class AlertsConfig:
    """Alerts to Telegram, a webhook and the log; secrets only from the environment or a file."""

    summary_every_minutes: float = 30.0  # progress summaries at most this often; 0: none
    send_samples: bool = True  # attach the newest sample wav and alignment PNG where possible
    webhook_url: str = ""  # generic JSON webhook (TACOTUNE_WEBHOOK_URL overrides it)
    secrets_file: str = ""  # KEY=VALUE lines holding TACOTUNE_TELEGRAM_TOKEN / _CHAT_ID
    timeout_seconds: float = 10.0  # per HTTP request
    retries: int = 3  # attempts per message before it is dropped (and the failure logged once)


@dataclass(frozen=True)
class VocoderConfig:
    """HiFi-GAN (Kong, Kim, Bae 2020, arXiv:2010.05646): mel -> waveform, trained separately.

    Defaults are the paper's V1 recipe (section 4 and the authors' config_v1.json).
    """

    generator: Literal["v1", "v2", "v3"] = "v1"  # size preset (vocoder/hifigan.py PRESETS)
    generator_channels: int = 0  # h_u, channels after the input convolution; 0: the preset's
    discriminator_divisor: int = 1  # divides every discriminator channel count; 1: the paper's
    segment_size: int = 8192  # training audio clip, samples (a multiple of audio.hop_length)
    batch_size: int = 16  # segments per step
    learning_rate: float = 2e-4  # initial AdamW learning rate, generator and discriminators
    adam_betas: tuple[float, float] = (0.8, 0.99)  # AdamW beta1, beta2
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    lr_decay: float = 0.999  # the learning rate is multiplied by this after every epoch
    feature_matching_weight: float = 2.0  # lambda_fm: weight of the feature-matching loss
    mel_weight: float = 45.0  # lambda_mel: weight of the mel-spectrogram L1 loss
    max_steps: int = 2_500_000  # optimizer steps (the paper trains V1 for 2.5M)
    max_minutes: float = 0.0  # wall-clock budget; 0 means none
    eval_every: int = 1000  # steps between validations (and checkpoints), on whole utterances
    checkpoint_every: int = 5000  # steps between checkpoints besides those of the validations
    eval_utterances: int = 4  # validation utterances vocoded (and Griffin-Lim'd) per validation
    grad_norm_ceiling: float = 1e6  # the guard's ceiling here (unclipped HiFi-GAN norms reach 1e4)


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a tacotune job."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)

    def replace(self, **sections: object) -> Config:
        """A copy with whole sections replaced (dataclasses.replace, typed for sections)."""
        return dataclasses.replace(self, **sections)  # type: ignore[arg-type]


def reduction_factors(model: ModelConfig) -> set[int]:
    """Every fine-decoder reduction factor the run will use."""
    return {r for _, r in model.reduction_schedule} or {model.reduction_factor}
