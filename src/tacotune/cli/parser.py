"""Every `tacotune` subcommand and its options; each names its handler in `commands.py`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from tacotune import __version__
from tacotune.cli import commands as handlers


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(
        prog="tacotune",
        description="tacotune: train, tune, supervise and serve Russian Tacotron2 voices",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tacotune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or lines")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_data_and_training_commands(commands)
    _add_vocoder_command(commands)
    _add_synthesize_command(commands)
    _add_search_commands(commands)
    _add_use_commands(commands)

    show = _command(commands, "config", handlers.cmd_config, "print the resolved configuration")
    _config_arguments(show)
    return parser


def _add_data_and_training_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """text, prepare and train."""
    text = _command(commands, "text", handlers.cmd_text, "show every stage of the text frontend")
    text.add_argument("text", help="Russian text, e.g. 'В 2024 году з+амок был закрыт.'")
    text.add_argument("--json", action="store_true", help="machine-readable output")
    _config_arguments(text)

    prep = _command(
        commands, "prepare", handlers.cmd_prepare, "validate a dataset and cache its mels"
    )
    prep.add_argument("data_dir", help="LJSpeech, RUSLAN or path|text-list dataset directory")
    prep.add_argument("-o", "--output", required=True, help="prepared dataset directory")
    prep.add_argument("--strict", action="store_true", help="fail if any row is excluded")
    _config_arguments(prep)

    tr = _command(commands, "train", handlers.cmd_train, "train a Tacotron2 on a prepared dataset")
    tr.add_argument("prepared_dir", help="directory written by `tacotune prepare`")
    tr.add_argument("-o", "--output", help="run directory (checkpoints, metrics, samples)")
    tr.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR exactly from its last checkpoint, with its own config",
    )
    tr.add_argument(
        "--warm-start",
        metavar="CKPT",
        help="initialize from another model: 'base' (the shipped base voice that fits the "
        "config), a base voice's name, or a checkpoint/run; layers whose shape differs are "
        "skipped",
    )
    _config_arguments(tr)
    _mlflow_argument(tr)


def _add_synthesize_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """synthesize."""
    syn = _command(commands, "synthesize", handlers.cmd_synthesize, "speak text with a checkpoint")
    syn.add_argument("checkpoint", help="a .pt file or a run directory (uses its best.pt)")
    syn.add_argument("text", nargs="?", help="Russian text (or use --file)")
    syn.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where TEXT is spoken: .wav, .flac, .mp3 or .ogg by the suffix (default: out.wav); "
        "- for standard output (a wav of every text, or --raw PCM)",
    )
    syn.add_argument("--file", help="one text per line, spoken in batches (- reads standard input)")
    syn.add_argument(
        "--out-dir",
        default="synthesized",
        help="where --file writes one file per line, named by its line number",
    )
    syn.add_argument(
        "--format",
        choices=["wav", "flac", "mp3", "ogg"],  # audio.AUDIO_FORMATS (not imported: torch)
        default="wav",
        help="the files --out-dir gets",
    )
    syn.add_argument(
        "--raw",
        action="store_true",
        help="with -o -: 16-bit little-endian mono PCM at the voice's sample rate, text by text",
    )
    syn.add_argument("--plot", action="store_true", help="also write alignment PNGs")
    syn.add_argument(
        "--seed", type=int, default=0, help="prenet-dropout and Griffin-Lim seed, 0 to 2**63-1"
    )
    syn.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model runs (auto: cuda when available)",
    )
    syn.add_argument(
        "--vocoder",
        metavar="VOC",
        help="a neural vocoder: a run directory of `tacotune vocoder train` or its checkpoint "
        "(default: Griffin-Lim)",
    )


def _add_use_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """export, monitor and serve."""

    exp = _command(
        commands, "export", handlers.cmd_export, "export a voice for another runtime (ONNX)"
    )
    exp.add_argument("voice", help="a .pt file, a run directory or a registry reference NAME[:V]")
    exp.add_argument("--format", choices=["onnx"], default="onnx", help="what to export to")
    exp.add_argument("-o", "--output", required=True, help="directory to create (or empty)")
    exp.add_argument(
        "--registry", help="registry directory (default: $TACOTUNE_REGISTRY or ./registry)"
    )
    exp.add_argument(
        "--vocoder",
        metavar="VOC",
        help="also export this neural vocoder (a vocoder run or checkpoint) as vocoder.onnx "
        "(a registry version exports its own vocoder without this)",
    )

    mon = _command(
        commands, "monitor", handlers.cmd_monitor, "watch a run or a study from its files"
    )
    mon.add_argument(
        "run_dir", help="a run (tacotune train -o DIR) or study (tacotune tune -o DIR) directory"
    )
    mon.add_argument("--once", action="store_true", help="print one snapshot and exit")
    mon.add_argument(
        "--dashboards",
        action="store_true",
        help="also serve, on 127.0.0.1 only, TensorBoard, the MLflow UI (when the run logged "
        "to MLflow) and optuna-dashboard (a study); stopped with Ctrl-C",
    )
    mon.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")

    _add_serve_command(commands)


def _add_search_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """tune, auto and registry."""
    tune = _command(
        commands, "tune", handlers.cmd_tune, "search hyperparameters (Optuna, with pruning)"
    )
    tune.add_argument("prepared_dir", help="directory written by `tacotune prepare`")
    tune.add_argument("-o", "--output", required=True, help="study directory (resumable)")
    tune.add_argument("--trials", type=int, help="finished trials to reach (tuning.trials)")
    tune.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    tune.add_argument(
        "--storage",
        help="SQLAlchemy URL shared by workers on several machines "
        "(default: a journal file in the study directory)",
    )
    tune.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    _config_arguments(tune)
    _mlflow_argument(tune)

    auto = _command(
        commands,
        "auto",
        handlers.cmd_auto,
        "data to a registered voice: prepare, tune, train, register, report",
    )
    auto.epilog = (
        "exit status: 0 a voice was registered; 3 every stage ran but the model failed the "
        "quality gate (registered as rejected, report.md says why); 1 an error"
    )
    auto.add_argument("data_dir", help="LJSpeech, RUSLAN or path|text-list dataset directory")
    auto.add_argument("-o", "--output", required=True, help="output directory (resumable)")
    auto.add_argument(
        "--budget", type=float, default=60.0, help="total minutes, every stage included"
    )
    auto.add_argument("--name", help="registry name of the voice (default: the data dir name)")
    auto.add_argument("--workers", type=int, default=1, help="tuning worker processes")
    auto.add_argument(
        "--from-scratch",
        action="store_true",
        help="random initial weights; by default every model fine-tunes the shipped base "
        "voice that fits it (tacotune/voices)",
    )
    _config_arguments(auto)
    _mlflow_argument(auto)

    reg = _command(
        commands, "registry", handlers.cmd_registry, "list, show, promote, export or add voices"
    )
    reg.add_argument("action", choices=["list", "show", "promote", "export", "add"])
    reg.add_argument("ref", nargs="?", help="name[:version|:stage] (add: a checkpoint or run)")
    reg.add_argument(
        "--root", help="registry directory (default: $TACOTUNE_REGISTRY or ./registry)"
    )
    reg.add_argument("--stage", help="promote: candidate, production or archived")
    reg.add_argument("--name", help="add: the voice's name")
    reg.add_argument(
        "--vocoder",
        metavar="VOC",
        help="add: a neural vocoder (a run of `tacotune vocoder train` or its checkpoint) "
        "stored with the voice as vocoder.pt",
    )
    reg.add_argument("-o", "--output", default="exported", help="export: target directory")
    reg.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="add: also register the version, with its model card, in this MLflow tracking "
        "server's Model Registry (default: where the run logged, if tracking.mlflow was on)",
    )


def _add_vocoder_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """vocoder train."""
    vocoder = commands.add_parser(
        "vocoder",
        help="train a neural (HiFi-GAN) vocoder",
        description="train a neural (HiFi-GAN) vocoder",
    )
    actions = vocoder.add_subparsers(dest="vocoder_command", required=True, metavar="ACTION")
    voc = _command(
        actions,
        "train",
        handlers.cmd_vocoder_train,
        "train or fine-tune HiFi-GAN on a prepared dataset",
    )
    voc.add_argument("prepared_dir", help="directory written by `tacotune prepare`")
    voc.add_argument("-o", "--output", help="vocoder run directory (checkpoints, metrics, samples)")
    voc.add_argument(
        "--resume",
        metavar="VOC",
        help="continue the vocoder run VOC exactly from its last checkpoint, with its own config",
    )
    voc.add_argument(
        "--from-acoustic",
        metavar="RUN_OR_CKPT",
        help="train on this acoustic model's teacher-forced mels instead of the recordings' "
        "(fine-tuning; cached in the run directory)",
    )
    voc.add_argument(
        "--warm-start",
        metavar="VOC_CKPT",
        help="start from another vocoder (run directory or checkpoint); layers whose shape "
        "differs are skipped",
    )
    _config_arguments(voc)
    _mlflow_argument(voc)


def _add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tacotune.serve.settings import API_KEY_ENV, ServerSettings  # a dataclass: light

    defaults = ServerSettings()
    srv = _command(
        commands,
        "serve",
        handlers.cmd_serve,
        f"an HTTP API and web page for voices (key: ${API_KEY_ENV})",
    )
    srv.add_argument(
        "voices",
        nargs="*",
        metavar="VOICE_OR_CKPT",
        help="NAME (its production version), NAME:N, a checkpoint or run directory, or "
        "ALIAS=any of these (default: every production voice in the registry)",
    )
    srv.add_argument(
        "--registry", help="registry directory (default: $TACOTUNE_REGISTRY or ./registry)"
    )
    srv.add_argument("--host", default=defaults.host, help="address to bind (0.0.0.0: every one)")
    srv.add_argument("--port", type=_port, default=defaults.port, help="TCP port (0: a free one)")
    srv.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="without an API key the server answers only Host headers naming localhost, an "
        "IP address or --host; also answer this name (repeatable; '*': any)",
    )
    srv.add_argument(
        "--alias",
        action="append",
        default=[],
        type=_alias,
        metavar="NAME=VOICE",
        help="a request's voice NAME (e.g. OpenAI's alloy) speaks with VOICE (repeatable; "
        "OpenAI's voices without an alias speak with the first voice)",
    )
    srv.add_argument(
        "--max-chars",
        type=_positive_int,
        default=defaults.max_input_chars,
        help="characters per request",
    )
    srv.add_argument(
        "--max-pieces",
        type=_positive_int,
        default=defaults.max_pieces,
        help="sentences per request",
    )
    srv.add_argument(
        "--queue", type=_positive_int, default=defaults.max_queue, help="requests admitted at once"
    )
    srv.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=defaults.request_timeout_s,
        help="seconds per request, from its arrival to its last byte sent",
    )
    srv.add_argument(
        "--threads", type=_positive_int, help="torch threads for synthesis (default: torch's)"
    )


def _alias(text: str) -> tuple[str, str]:
    """argparse type: NAME=VOICE."""
    name, _, voice = text.partition("=")
    if not name or not voice:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VOICE (e.g. alloy=ruslana)")
    return name, voice


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give 1 or more")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: give 0 to 65535")
    return value


def _positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give seconds above 0, finite")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default shown once: not when there is none (None, a flag's False) or
    when its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
) -> argparse.ArgumentParser:
    sub = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        formatter_class=HelpFormatter,
    )
    sub.set_defaults(handler=handler)
    return sub


def _config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--config", default=default, help="YAML config (a bundled name such as demo.yaml works too)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )
    parser.add_argument(
        "--hparams",
        metavar="NAME=VALUE,...",
        help="the predecessor's flat hparams, e.g. learning_rate=1e-3",
    )


def _mlflow_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="log to this MLflow tracking server (sets tracking.mlflow_uri, tracking.mlflow=true)",
    )
