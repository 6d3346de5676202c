"""The `tacotune` command line: parse arguments, configure logging once, call the library.

A `TacotuneError` becomes one line on stderr and exit code 1; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.logging import RichHandler

from tacotune import __version__, progress
from tacotune.config import Config, dump_config, load_config
from tacotune.errors import ConfigError, DatasetError, TacotuneError, TextError
from tacotune.signals import ignore_further_interrupts, interrupt_on_sigterm

log = logging.getLogger("tacotune")

WAV_SUFFIXES = (".wav", ".flac")  # what `synthesize -o` writes (soundfile picks the format)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tacotune` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    interrupt_on_sigterm()  # `kill` stops like Ctrl-C (training saves a resumable last.pt)
    _configure_logging(args.verbose)
    progress.enable(sys.stderr.isatty() and not args.quiet)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except TacotuneError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        ignore_further_interrupts()  # a second Ctrl-C on the way out must not print a traceback
        log.error("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(
        prog="tacotune",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tacotune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    text = _command(commands, "text", _cmd_text, "show every stage of the text frontend")
    text.add_argument("text", help="Russian text, e.g. 'В 2024 году з+амок был закрыт.'")
    text.add_argument("--json", action="store_true", help="machine-readable output")
    _config_arguments(text)

    prep = _command(commands, "prepare", _cmd_prepare, "validate a dataset and cache its mels")
    prep.add_argument("data_dir", help="LJSpeech, RUSLAN or path|text-list dataset directory")
    prep.add_argument("-o", "--output", required=True, help="prepared dataset directory")
    prep.add_argument("--strict", action="store_true", help="fail if any row is excluded")
    _config_arguments(prep)

    tr = _command(commands, "train", _cmd_train, "train a Tacotron2 on a prepared dataset")
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
        help="initialize from another model; layers whose shape differs are skipped",
    )
    _config_arguments(tr)
    _mlflow_argument(tr)

    _add_vocoder_command(commands)

    syn = _command(commands, "synthesize", _cmd_synthesize, "speak text with a checkpoint")
    syn.add_argument("checkpoint", help="a .pt file or a run directory (uses its best.pt)")
    syn.add_argument("text", nargs="?", help="Russian text (or use --file)")
    syn.add_argument("-o", "--output", default="out.wav", help="wav file for TEXT")
    syn.add_argument("--file", help="one text per line, synthesized in a batch")
    syn.add_argument("--out-dir", default="synthesized", help="where --file writes its wavs")
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

    _add_search_commands(commands)

    exp = _command(commands, "export", _cmd_export, "export a voice for another runtime (ONNX)")
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

    mon = _command(commands, "monitor", _cmd_monitor, "watch a run or a study from its files")
    mon.add_argument(
        "run_dir", help="a run (tacotune train -o DIR) or study (tacotune tune -o DIR) directory"
    )
    mon.add_argument("--once", action="store_true", help="print one snapshot and exit")
    mon.add_argument(
        "--dashboards",
        action="store_true",
        help="also serve TensorBoard on 127.0.0.1 (stopped when monitor exits)",
    )
    mon.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")

    _add_serve_command(commands)

    show = _command(commands, "config", _cmd_config, "print the resolved configuration")
    _config_arguments(show)
    return parser


def _add_search_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """tune, auto and registry."""
    tune = _command(commands, "tune", _cmd_tune, "search hyperparameters (Optuna, with pruning)")
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
        _cmd_auto,
        "data to a registered voice: prepare, tune, train, register, report",
    )
    auto.add_argument("data_dir", help="LJSpeech, RUSLAN or path|text-list dataset directory")
    auto.add_argument("-o", "--output", required=True, help="output directory (resumable)")
    auto.add_argument(
        "--budget", type=float, default=60.0, help="total minutes, every stage included"
    )
    auto.add_argument("--name", help="registry name of the voice (default: the data dir name)")
    auto.add_argument("--workers", type=int, default=1, help="tuning worker processes")
    _config_arguments(auto)
    _mlflow_argument(auto)

    reg = _command(commands, "registry", _cmd_registry, "list, show, promote, export or add voices")
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


def _add_vocoder_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """vocoder train."""
    vocoder = commands.add_parser(
        "vocoder",
        help="train a neural (HiFi-GAN) vocoder",
        description="train a neural (HiFi-GAN) vocoder",
    )
    actions = vocoder.add_subparsers(dest="vocoder_command", required=True, metavar="ACTION")
    voc = _command(
        actions, "train", _cmd_vocoder_train, "train or fine-tune HiFi-GAN on a prepared dataset"
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
        commands, "serve", _cmd_serve, f"an HTTP API and web page for voices (key: ${API_KEY_ENV})"
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
    srv.add_argument("--port", type=int, default=defaults.port, help="TCP port")
    srv.add_argument(
        "--max-chars", type=int, default=defaults.max_input_chars, help="characters per request"
    )
    srv.add_argument(
        "--max-pieces", type=int, default=defaults.max_pieces, help="sentences per request"
    )
    srv.add_argument(
        "--queue", type=int, default=defaults.max_queue, help="requests admitted at once"
    )
    srv.add_argument(
        "--timeout", type=float, default=defaults.request_timeout_s, help="seconds per request"
    )
    srv.add_argument("--threads", type=int, help="torch threads for synthesis (default: torch's)")


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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, _overrides(args), args.hparams)


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set values, and what --mlflow-uri stands for."""
    overrides = list(args.set)
    if getattr(args, "mlflow_uri", None):
        overrides += [f"tracking.mlflow_uri={args.mlflow_uri}", "tracking.mlflow=true"]
    return overrides


def _configure_logging(verbose: bool) -> None:
    """Once, here: rich records on a terminal, plain one-line records anywhere else
    (pipes, CI logs, files), so that every message stays one greppable line."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(
            console=progress.CONSOLE,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            log_time_format="[%X]",
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    for noisy in ("matplotlib", "numba", "PIL", "urllib3", "pymorphy3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_text(args: argparse.Namespace) -> int:
    from tacotune.text.frontend import TextFrontend

    result = TextFrontend(_load(args).text).process(args.text)
    if args.json:
        print(
            json.dumps(
                {
                    "raw": result.raw,
                    "normalized": result.normalized,
                    "stressed": result.stressed,
                    "ids": list(result.ids) if result.ids else None,
                    "stress_sources": dict(result.stress_sources),
                    "unknown": [
                        {
                            "char": u.char,
                            "codepoint": f"U+{ord(u.char):04X}",
                            "count": u.count,
                            "positions": list(u.positions),
                        }
                        for u in result.unknown
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        ids = (
            f"{list(result.ids)} ({len(result.ids)})" if result.ids else "none: unknown characters"
        )
        print(f"raw:        {result.raw}")
        print(f"normalized: {result.normalized}")
        print(f"stressed:   {result.stressed}")
        print(f"ids:        {ids}")
        print(f"stress:     {dict(result.stress_sources) or '-'}")
        print("unknown:    " + ("; ".join(u.describe() for u in result.unknown) or "none"))
    return 1 if result.unknown else 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from tacotune.data.manifest import REPORT_MD
    from tacotune.data.prepare import prepare_dataset
    from tacotune.data.report import render_markdown

    try:
        result = prepare_dataset(args.data_dir, args.output, _load(args), strict=args.strict)
    except DatasetError:
        report = Path(args.output) / REPORT_MD
        if report.exists():  # the report of a failed run says what to fix
            print(report.read_text(encoding="utf-8"))
        raise
    print(render_markdown(result.report))
    log.info("prepared dataset written to %s", result.root)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(_load(args)), end="")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from tacotune.checkpoint import checkpoint_config, load_checkpoint
    from tacotune.tracking import run_listeners
    from tacotune.train import resume, train

    if args.resume:
        if args.config or args.hparams or args.warm_start or args.mlflow_uri or args.output:
            raise ConfigError(
                "--resume continues RUN_DIR in place with the run's own config (its MLflow "
                "settings included): -o, --config, --hparams, --warm-start and --mlflow-uri "
                "cannot be given; only --set of train.max_steps-like keys"
            )
        run_dir = Path(args.resume)
        config = checkpoint_config(load_checkpoint(run_dir))
        listeners = run_listeners(config, run_dir)
        result = resume(run_dir, args.prepared_dir, args.set, listeners=listeners)
    else:
        if not args.output:
            raise ConfigError("train needs -o RUN_DIR (or --resume RUN_DIR)")
        config, run_dir = _load(args), Path(args.output)
        result = train(
            config,
            args.prepared_dir,
            run_dir,
            warm_start=args.warm_start,
            listeners=run_listeners(config, run_dir),
        )
    log.info(
        "finished at step %d (%s); best score %.4f at step %d; run in %s",
        result.step,
        result.stop_reason,
        result.best_score,
        result.best_step,
        result.run_dir,
    )
    return 0


def _cmd_vocoder_train(args: argparse.Namespace) -> int:
    from tacotune.checkpoint import checkpoint_config, load_checkpoint
    from tacotune.tracking import run_listeners
    from tacotune.vocoder import resume_vocoder, train_vocoder

    if args.resume:
        given = (args.config, args.hparams, args.warm_start, args.from_acoustic, args.mlflow_uri)
        if any(given) or args.output:
            raise ConfigError(
                "--resume continues VOC in place with the run's own config and mels: -o, "
                "--config, --hparams, --warm-start, --from-acoustic and --mlflow-uri cannot be "
                "given; only --set of vocoder.max_steps-like keys"
            )
        run_dir = Path(args.resume)
        config = checkpoint_config(load_checkpoint(run_dir))
        listeners = run_listeners(config, run_dir)
        result = resume_vocoder(run_dir, args.prepared_dir, args.set, listeners=listeners)
    else:
        if not args.output:
            raise ConfigError("vocoder train needs -o VOC (or --resume VOC)")
        config, run_dir = _load(args), Path(args.output)
        result = train_vocoder(
            config,
            args.prepared_dir,
            run_dir,
            from_acoustic=args.from_acoustic,
            warm_start=args.warm_start,
            listeners=run_listeners(config, run_dir),
        )
    beat = (
        f"it beat Griffin-Lim (eval/mcd < gl/mcd) at step {result.beat_griffin_lim_at}"
        if result.beat_griffin_lim_at
        else "it has not beaten Griffin-Lim yet (see gl/* in metrics.jsonl)"
    )
    log.info(
        "finished at step %d (%s); best validation mel L1 %.4f at step %d; %s; run in %s",
        result.step,
        result.stop_reason,
        result.best_score,
        result.best_step,
        beat,
        result.run_dir,
    )
    return 0


def _cmd_synthesize(args: argparse.Namespace) -> int:
    from tacotune.files import check_output_directory, check_output_file
    from tacotune.synthesize import Synthesizer, check_seed, synthesize_to_files

    if (args.text is None) == (args.file is None):
        raise ConfigError("give either TEXT or --file")
    check_seed(args.seed)
    # every cheap check before the model loads and minutes of synthesis start
    if args.text is not None:
        check_output_file(Path(args.output), "-o", WAV_SUFFIXES)
        jobs = [(args.text, Path(args.output))]
        summary = None
    else:
        lines = _read_text_file(Path(args.file), "--file").splitlines()
        out_dir = Path(args.out_dir)
        check_output_directory(out_dir, "--out-dir")
        jobs = [
            (line, out_dir / f"{i:04d}.wav")
            for i, line in enumerate((x for x in lines if x.strip()), start=1)
        ]
        if not jobs:
            raise TextError(f"--file {args.file} holds no text: write one text per line")
        summary = out_dir / "synthesis.json"
    synthesizer = Synthesizer(args.checkpoint, device=args.device, seed=args.seed)
    if args.vocoder:
        from tacotune.vocoder import load_vocoder

        synthesizer.vocoder = load_vocoder(args.vocoder, synthesizer.config.audio, args.device)
    synthesize_to_files(synthesizer, jobs, plot=args.plot, summary_path=summary)
    return 0


def _read_text_file(path: Path, flag: str) -> str:
    """A UTF-8 text file named on the command line; unreadable or not UTF-8: a TextError."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise TextError(f"{flag} {path}: cannot read it ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise TextError(
            f"{flag} {path} is not UTF-8 (byte {error.start}); re-save it as UTF-8"
        ) from error


def _cmd_export(args: argparse.Namespace) -> int:
    from tacotune.export import export_voice

    path = export_voice(  # a --vocoder path is loaded there, checked against the voice's mels
        args.voice, args.output, registry_root=args.registry, vocoder=args.vocoder
    )
    log.info("%s export written to %s (see its README.md)", args.format, path)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from tacotune.registry import Registry
    from tacotune.serve.server import run_server
    from tacotune.serve.settings import ServerSettings, api_key_from_env
    from tacotune.serve.voices import load_voices

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        max_input_chars=args.max_chars,
        max_pieces=args.max_pieces,
        max_queue=args.queue,
        request_timeout_s=args.timeout,
        api_key=api_key_from_env(),
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_server(load_voices(args.voices, Registry(args.registry)), settings)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from tacotune.monitor import monitor

    return monitor(
        Path(args.run_dir), once=args.once, dashboards=args.dashboards, interval=args.interval
    )


def _cmd_tune(args: argparse.Namespace) -> int:
    from tacotune.tuning import run_study

    result = run_study(
        _load(args),
        args.prepared_dir,
        args.output,
        trials=args.trials,
        workers=args.workers,
        storage=args.storage,
        timeout=args.timeout,
    )
    print((Path(args.output) / "summary.md").read_text(encoding="utf-8"))
    if result.best_trial is None:
        log.warning("no trial completed yet: %s", result.counts)
    else:
        log.info("best trial %d: score %.4f", result.best_trial, result.best_value)
    return 0


def _cmd_auto(args: argparse.Namespace) -> int:
    from tacotune.auto import run_auto

    explicit = args.config is not None or args.hparams is not None
    stages = run_auto(
        _load(args) if explicit else None,  # None: auto chooses the preset for this machine
        args.data_dir,
        args.output,
        args.budget,
        overrides=_overrides(args),
        name=args.name,
        workers=args.workers,
    )
    log.info(
        "voice registered as %s; report: %s", stages["register"]["ref"], stages["report"]["report"]
    )
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tacotune.registry import Registry, versions_table

    registry = Registry(args.root)
    if args.action == "list":  # the listing is the command's output: stdout
        versions = registry.versions(args.ref)
        if not versions:
            registry.check_root()  # a mistyped --root is an error, not an empty table
        Console().print(versions_table(versions))
        return 0
    if not args.ref:
        raise ConfigError(f"registry {args.action} needs a reference: NAME[:VERSION]")
    if args.action == "add":
        source = Path(args.ref)
        checkpoint = source / "checkpoints" / "model.pt" if source.is_dir() else source
        version = registry.register(
            args.name or source.name, checkpoint, source=str(source), vocoder=args.vocoder
        )
    elif args.action == "promote":
        if not args.stage:
            raise ConfigError("registry promote needs --stage candidate|production|archived")
        version = registry.promote(args.ref, args.stage)
    elif args.action == "export":
        path = registry.export(args.ref, args.output)
        log.info("exported to %s", path)
        return 0
    else:
        version = registry.get(args.ref)
    print(
        json.dumps(
            {**version.meta(), "directory": str(version.directory)}, indent=2, ensure_ascii=False
        )
    )
    return 0
