"""The predecessor's flat `--hparams "name=value,..."` names, mapped onto tacotune's config.

Each name either maps to one `section.key` (with an optional value conversion)
or is rejected with the reason and what to use instead. Sources: the predecessor's
hparams.py table and its README_HYPERPARAMS. Names that had no effect there ("DEAD") are
rejected, not emulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tacotune.config.safe_yaml import load_yaml
from tacotune.errors import ConfigError, short_repr


@dataclass(frozen=True)
class Mapped:
    """A legacy name that still means something: where it goes and how its value converts."""

    target: str  # section.key
    convert: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Rejected:
    """A legacy name with no tacotune equivalent, and what to do instead."""

    reason: str


_DEAD = Rejected("it had no effect in the predecessor (dead setting); tacotune has no equivalent")


def _precision(fp16: Any) -> str:
    if not isinstance(fp16, bool):
        raise ConfigError(f"fp16_run must be True or False, found {short_repr(fp16)}")
    return "fp16" if fp16 else "fp32"


LEGACY: dict[str, Mapped | Rejected] = {
    # audio
    "sampling_rate": Mapped("audio.sample_rate"),
    "filter_length": Mapped("audio.n_fft"),
    "hop_length": Mapped("audio.hop_length"),
    "win_length": Mapped("audio.win_length"),
    "n_mel_channels": Mapped("audio.n_mels"),
    "mel_fmin": Mapped("audio.fmin"),
    "mel_fmax": Mapped("audio.fmax"),
    "max_wav_value": Rejected("audio is read as floats in [-1, 1]; no scale is needed"),
    # model
    "symbols_embedding_dim": Mapped("model.embedding_dim"),
    "encoder_kernel_size": Mapped("model.encoder_kernel_size"),
    "encoder_n_convolutions": Mapped("model.encoder_conv_layers"),
    "encoder_embedding_dim": Mapped("model.encoder_dim"),
    "encoder_dropout_rate": Mapped("model.encoder_dropout"),
    "n_frames_per_step": Mapped("model.reduction_factor"),
    "attention_rnn_dim": Mapped("model.attention_rnn_dim"),
    "attention_dim": Mapped("model.attention_dim"),
    "attention_location_n_filters": Mapped("model.attention_location_filters"),
    "attention_location_kernel_size": Mapped("model.attention_location_kernel_size"),
    "p_attention_dropout": Mapped("model.attention_dropout"),
    "p_decoder_dropout": Mapped("model.decoder_dropout"),
    "decoder_rnn_dim": Mapped("model.decoder_rnn_dim"),
    "prenet_dim": Mapped("model.prenet_dim"),
    "postnet_embedding_dim": Mapped("model.postnet_dim"),
    "postnet_kernel_size": Mapped("model.postnet_kernel_size"),
    "postnet_n_convolutions": Mapped("model.postnet_layers"),
    "postnet_dropout_rate": Mapped("model.postnet_dropout"),
    "max_decoder_steps": Mapped("model.max_decoder_steps"),
    "gate_threshold": Mapped("model.gate_threshold"),
    "use_gst": Mapped("model.gst"),
    "token_num": Mapped("model.gst_tokens"),
    "num_heads": Mapped("model.gst_heads"),
    "token_embedding_size": Mapped("model.gst_dim"),
    "use_mmi": Mapped("model.ctc"),
    "use_ddc": Mapped("model.ddc"),
    "use_ddc_loss": Mapped("model.ddc"),
    "ddc_reduction_factor": Mapped("model.ddc_reduction_factor"),
    "dropout_rate": Rejected(
        "it set prenet, attention and decoder dropout at once; set model.prenet_dropout, "
        "model.attention_dropout or model.decoder_dropout"
    ),
    # loss
    "use_guided_attn": Mapped("loss.guided_attn"),
    "guided_attn_weight": Mapped("loss.guided_attn_weight"),
    "guide_loss_weight": Mapped("loss.guided_attn_weight"),
    "guide_loss_initial_weight": Mapped("loss.guided_attn_weight"),
    "guide_loss_decay_steps": Rejected(
        "the weight now halves every loss.guided_attn_half_life steps, down to "
        "loss.guided_attn_floor"
    ),
    "guide_loss_decay_start": Rejected(
        "the guided-attention weight decays from step 0; see loss.guided_attn_half_life"
    ),
    "mmi_weight": Mapped("loss.ctc_weight"),
    "ddc_consistency_weight": Mapped("loss.ddc_weight"),
    "ddc_loss_weight": Mapped("loss.ddc_weight"),
    # train
    "seed": Mapped("train.seed"),
    "batch_size": Mapped("train.batch_size"),
    "learning_rate": Mapped("train.learning_rate"),
    "learning_rate_min": Mapped("train.min_learning_rate"),
    "weight_decay": Mapped("train.weight_decay"),
    "grad_clip_thresh": Mapped("train.grad_clip"),
    "max_grad_norm": Mapped("train.grad_clip"),
    "warmup_steps": Mapped("train.warmup_steps"),
    "validation_freq": Mapped("train.eval_every"),
    "iters_per_checkpoint": Mapped("train.eval_every"),
    "fp16_run": Mapped("train.precision", _precision),
    "epochs": Rejected("tacotune counts optimizer steps: use train.max_steps or train.max_minutes"),
    "distributed_run": Rejected("launch with `torchrun --nproc_per_node=N -m tacotune train ...`"),
    "dist_backend": Rejected("chosen automatically: nccl on GPU, gloo on CPU"),
    "dist_url": Rejected("torchrun sets the rendezvous address"),
    "training_files": Rejected("run `tacotune prepare DATA_DIR -o PREPARED_DIR` and train on it"),
    "validation_files": Rejected("`tacotune prepare` makes the split (or keeps your val.csv)"),
    "text_cleaners": Rejected("the Russian frontend is fixed; see the text section of the config"),
    "ignore_layers": Rejected("--warm-start skips every layer whose shape differs, and lists them"),
    "use_saved_learning_rate": Rejected("--resume restores the optimizer and schedule exactly"),
    "learning_rate_decay": Rejected("the schedule is warmup then halving: train.lr_half_life"),
    "learning_rate_decay_patience": Rejected(
        "the schedule is warmup then halving: train.lr_half_life"
    ),
    "p_teacher_forcing": Rejected("training is always teacher-forced; evaluation is free-running"),
    "mask_padding": Rejected("padding is always masked"),
    "cudnn_enabled": Rejected("cuDNN is always enabled when available"),
    "cudnn_benchmark": Rejected("not exposed; input lengths vary so benchmarking does not pay"),
    "use_bucket_batching": Rejected("batches are always length-bucketed"),
    "drop_frame_rate": Rejected("frame dropout is not implemented; prenet dropout does its job"),
    "fp16": Rejected("use fp16_run=True or train.precision"),
    # supervision (names from the predecessor's README_HYPERPARAMS)
    "early_stopping_patience": Mapped("supervision.patience"),
    "early_stopping_min_delta": Mapped("supervision.min_delta"),
    "max_restart_attempts": Mapped("supervision.max_rollbacks"),
    "gradient_explosion_threshold": Mapped("supervision.grad_norm_ceiling"),
    "debug_report_interval": Mapped("supervision.debug_every"),
    "nan_detection_threshold": Rejected("a non-finite loss or gradient is always a bad step"),
    "emergency_restart_enabled": Rejected(
        "the divergence guard is always on; supervision.max_rollbacks bounds its rollbacks"
    ),
    "debug_reporting": Rejected(
        "debug reports are written on every guard event; supervision.debug_every adds periodic ones"
    ),
    "telegram_monitoring": Rejected(
        "alerts go to Telegram whenever TACOTUNE_TELEGRAM_TOKEN and TACOTUNE_TELEGRAM_CHAT_ID "
        "are set in the environment (never in a config)"
    ),
    "telegram_notification_interval": Rejected("see alerts.summary_every_minutes"),
    "tensorboard_logging": Mapped("tracking.tensorboard"),
}
for _name in (
    "save_interval",
    "validate_interval",
    "dynamic_loss_scaling",
    "load_mel_from_disk",
    "dataset_path",
    "mmi_ignore_layers",
    "mmi_map",
    "use_gaf",
    "update_gaf_every_n_step",
    "max_gaf",
    "use_dynamic_guide_loss",
    "global_mean_npy",
    "early_stopping",
    "attention_alignment_loss_weight",
    "use_attention_smoothing",
    "attention_smoothing_factor",
    "use_scheduled_teacher_forcing",
    "teacher_forcing_start_ratio",
    "teacher_forcing_end_ratio",
    "teacher_forcing_decay_start",
    "teacher_forcing_decay_steps",
    "curriculum_teacher_forcing",
    "teacher_forcing_decay",
    "min_teacher_forcing",
    "use_balanced_sampling",
    "gradient_accumulation_steps",
    "loss_scale_init",
    "loss_scale_factor",
    "use_forward_attention",
    "use_location_sensitive_attention",
    "use_memory_efficient_attention",
    "attention_chunk_size",
    "use_audio_quality_enhancement",
    "quality_enhancement_threshold",
    "noise_gate_enabled",
    "spectral_enhancement_enabled",
    "guided_attention_enabled",
    "log_attention_weights",
    "log_alignment_metrics",
    "alignment_diagonal_threshold",
    "validation_attention_analysis",
    "save_attention_plots",
    "attention_plot_frequency",
    "use_location_relative_attention",
    "location_relative_sigma",
    "no_dga",
    "ref_enc_size",
    "ref_enc_strides",
    "ref_enc_pad",
    "adaptive_gate_threshold",
    "gate_min_threshold",
    "gate_max_threshold",
    "force_model_reinit",
    "xavier_init",
    "spectral_loss_weight",
    "perceptual_loss_weight",
    "style_loss_weight",
    "monotonic_loss_weight",
    "mel_loss_weight",
    "gate_loss_weight",
    "ref_enc_filters",
    "ref_enc_gru_size",
    "n_symbols",
):
    LEGACY.setdefault(_name, _DEAD)


def translate_hparams(hparams: str) -> dict[str, dict[str, Any]]:
    """Turn `"learning_rate=1e-3,batch_size=16"` into a nested override tree.

    Values are parsed as YAML scalars, with Python's `True`/`False` accepted.
    Raises ConfigError naming every rejected or unknown name at once.
    """
    tree: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for item in _split_items(hparams):
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            problems.append(f"{short_repr(item)} is not name=value")
            continue
        entry = LEGACY.get(name)
        if entry is None:
            import difflib

            close = difflib.get_close_matches(name, list(LEGACY), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown hparam {short_repr(name)}{hint}; use --set section.key=value")
            continue
        if isinstance(entry, Rejected):
            problems.append(f"hparam {name!r} is not supported: {entry.reason}")
            continue
        value = _parse_value(text.strip(), name)
        if entry.convert is not None:
            value = entry.convert(value)
        section, _, key = entry.target.partition(".")
        tree.setdefault(section, {})[key] = value
    if problems:
        raise ConfigError("--hparams: " + "; ".join(problems))
    return tree


def _split_items(hparams: str) -> list[str]:
    """Split on commas that are not inside [...] (lists such as reduction schedules)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in hparams:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


def _parse_value(text: str, name: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    return load_yaml(text, f"--hparams {name}")
