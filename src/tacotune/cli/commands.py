"""The handlers of the `tacotune` subcommands: each turns parsed arguments into one library
call (imported inside the handler, so that `tacotune text` does not load torch's training
stack) and returns the exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tacotune.config import Config, dump_config, load_config
from tacotune.config.rules import validate
from tacotune.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from tacotune.registry.version import ModelVersion

log = logging.getLogger("tacotune")

NO_VOICE_EXIT = 3  # `tacotune auto` ran every stage, but the model failed the quality gate


def config_from_args(args: argparse.Namespace) -> Config:
    """The config that --config, --set, --mlflow-uri and --hparams describe."""
    return load_config(args.config, overrides_from_args(args), args.hparams)


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """--set values, and what --mlflow-uri stands for."""
    overrides = list(args.set)
    if getattr(args, "mlflow_uri", None):
        overrides += [f"tracking.mlflow_uri={args.mlflow_uri}", "tracking.mlflow=true"]
    return overrides


def cmd_text(args: argparse.Namespace) -> int:
    from tacotune.text.frontend import TextFrontend

    result = TextFrontend(config_from_args(args).text).process(args.text)
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


def cmd_prepare(args: argparse.Namespace) -> int:
    from tacotune.data.manifest import REPORT_MD
    from tacotune.data.prepare import prepare_dataset
    from tacotune.data.report import render_markdown

    try:
        result = prepare_dataset(
            args.data_dir, args.output, config_from_args(args), strict=args.strict
        )
    except DatasetError:
        report = Path(args.output) / REPORT_MD
        if report.exists():  # the report of a failed run says what to fix
            print(report.read_text(encoding="utf-8"))
        raise
    print(render_markdown(result.report))
    log.info("prepared dataset written to %s", result.root)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(config_from_args(args)), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tacotune.outputs import Kind, check_output
    from tacotune.tracking import run_listeners
    from tacotune.train.loop import read_train_resume, resume, train

    if args.resume:
        if args.config or args.hparams or args.warm_start or args.mlflow_uri or args.output:
            raise ConfigError(
                "--resume continues RUN_DIR in place with the run's own config (its MLflow "
                "settings included): -o, --config, --hparams, --warm-start and --mlflow-uri "
                "cannot be given; only --set of train.max_steps-like keys"
            )
        # one read of the checkpoint; the listeners hear the config --set made
        point = read_train_resume(args.resume, args.set)
        listeners = run_listeners(point.config, point.run_dir)
        result = resume(point, args.prepared_dir, listeners=listeners)
    else:
        if not args.output:
            raise ConfigError("train needs -o RUN_DIR (or --resume RUN_DIR)")
        config, run_dir = config_from_args(args), Path(args.output)
        check_output(run_dir, Kind.TRAINING_RUN)  # before MLflow or an alert starts anything
        if args.warm_start:  # recorded in the run's config.yaml: where its weights came from
            config = validate(
                config.replace(train=dataclasses.replace(config.train, warm_start=args.warm_start))
            )
        elif not config.train.warm_start:
            _hint_random_start(config)
        result = train(config, args.prepared_dir, run_dir, listeners=run_listeners(config, run_dir))
    log.info(
        "finished at step %d (%s); best score %.4f at step %d; run in %s",
        result.step,
        result.stop_reason,
        result.best_score,
        result.best_step,
        result.run_dir,
    )
    return 0


def cmd_vocoder_train(args: argparse.Namespace) -> int:
    from tacotune.outputs import Kind, check_output
    from tacotune.tracking import run_listeners
    from tacotune.vocoder.train import read_vocoder_resume, resume_vocoder, train_vocoder

    if args.resume:
        given = (args.config, args.hparams, args.warm_start, args.from_acoustic, args.mlflow_uri)
        if any(given) or args.output:
            raise ConfigError(
                "--resume continues VOC in place with the run's own config and mels: -o, "
                "--config, --hparams, --warm-start, --from-acoustic and --mlflow-uri cannot be "
                "given; only --set of vocoder.max_steps-like keys"
            )
        # one read of the checkpoint; the listeners hear the config --set made
        point = read_vocoder_resume(args.resume, args.set)
        listeners = run_listeners(point.config, point.run_dir)
        result = resume_vocoder(point, args.prepared_dir, listeners=listeners)
    else:
        if not args.output:
            raise ConfigError("vocoder train needs -o VOC (or --resume VOC)")
        config, run_dir = config_from_args(args), Path(args.output)
        check_output(run_dir, Kind.VOCODER_RUN)  # before MLflow or an alert starts anything
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


def cmd_synthesize(args: argparse.Namespace) -> int:
    from tacotune.cli.speak import cmd_synthesize as speak

    return speak(args)


def cmd_export(args: argparse.Namespace) -> int:
    from tacotune.export.exporter import export_voice

    path = export_voice(  # a --vocoder path is loaded there, checked against the voice's mels
        args.voice, args.output, registry_root=args.registry, vocoder=args.vocoder
    )
    log.info("%s export written to %s (see its README.md)", args.format, path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tacotune.extras import require

    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require(module, "serve", "tacotune serve")
    import torch

    from tacotune.registry import Registry
    from tacotune.serve.runner import on_synthesis_thread
    from tacotune.serve.server import bind, run_server
    from tacotune.serve.settings import ServerSettings, api_key_from_env
    from tacotune.serve.voices import load_voices

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        max_input_chars=args.max_chars,
        max_pieces=args.max_pieces,
        max_queue=args.queue,
        request_timeout_s=args.timeout,
        allowed_hosts=tuple(args.allow_host),
        voice_aliases=tuple(args.alias),
        api_key=api_key_from_env(),
    )
    sockets = bind(settings)  # a port in use is one line, before any voice loads
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        # torch runs on the synthesis thread only, loading included (serve/runner.py: why)
        voices = on_synthesis_thread(load_voices, args.voices, Registry(args.registry))
        return run_server(voices, settings, sockets)
    finally:
        for sock in sockets:
            sock.close()


def cmd_monitor(args: argparse.Namespace) -> int:
    from tacotune.monitor import monitor

    return monitor(
        Path(args.run_dir), once=args.once, dashboards=args.dashboards, interval=args.interval
    )


def cmd_tune(args: argparse.Namespace) -> int:
    from tacotune.outputs import Kind, check_output
    from tacotune.tuning import run_study

    check_output(args.output, Kind.STUDY)  # new, empty or a study to continue
    result = run_study(
        config_from_args(args),
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


def _hint_random_start(config: Config) -> None:
    """Say so when a run starts from random weights although a shipped base voice fits, and
    which settings of `auto`'s from-scratch recipe the config does not use."""
    from tacotune.auto.plan import SCRATCH_RECIPE
    from tacotune.tuning.space import current_value
    from tacotune.voices import matching_base

    voice = matching_base(config)
    if voice is not None:
        log.info(
            "training from random weights; the shipped base voice %s fits this model: "
            "--warm-start base fine-tunes it and speaks far sooner",
            voice.name,
        )
    missing = {k: v for k, v in SCRATCH_RECIPE.items() if current_value(config, k) != v}
    if missing:
        log.info(
            "from random weights `auto` adds %s: a voice speaks sooner with them than with "
            "this config's %s (bench/time_to_voice.py)",
            " ".join(f"--set {key}={value}" for key, value in missing.items()),
            ", ".join(f"{key} {current_value(config, key)}" for key in missing),
        )


def cmd_auto(args: argparse.Namespace) -> int:
    from tacotune.auto import NoVoiceError, run_auto

    explicit = args.config is not None or args.hparams is not None
    config = config_from_args(args) if explicit else None  # None: auto chooses the preset
    try:
        stages = run_auto(
            config,
            args.data_dir,
            args.output,
            args.budget,
            overrides=overrides_from_args(args),
            name=args.name,
            workers=args.workers,
            from_scratch=args.from_scratch,
        )
    except NoVoiceError as error:  # every stage ran; the model failed the quality gate
        log.error("%s", error)
        return NO_VOICE_EXIT
    log.info(
        "voice registered as %s; report: %s", stages["register"]["ref"], stages["report"]["report"]
    )
    return 0


def _registry_mlflow_uri(given: str | None, source: Path) -> str | None:
    """Where `registry add` also registers in MLflow's Model Registry: --mlflow-uri, else
    the tracking store of a run whose config has tracking.mlflow on, else nowhere."""
    if given:
        return given
    if not (source / "config.yaml").is_file():
        return None
    from tacotune.tracking.mlflow import tracking_uri

    config = load_config(source / "config.yaml")
    return tracking_uri(config, source) if config.tracking.mlflow else None  # where it logged


def _register_in_mlflow(uri: str, version: ModelVersion) -> None:
    """The new registry version in MLflow too; a failure there leaves it registered here."""
    from tacotune.registry.version import CARD_FILE
    from tacotune.tracking.mlflow import TrackingError, register_directory

    card = (version.directory / CARD_FILE).read_text(encoding="utf-8")
    try:
        register_directory(uri, version.name, version.directory, card, version.ref)
    except TrackingError as error:
        log.warning("%s is registered here but not in MLflow: %s", version.ref, error)


def cmd_registry(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tacotune.registry import Registry, versions_table

    registry = Registry(args.root)
    if args.action == "list":  # the listing is the command's output: stdout
        versions = registry.versions(args.ref)
        if not versions:
            registry.check_root()  # a mistyped --root is an error, not an empty table
        wide = None if sys.stdout.isatty() else 160  # off a terminal rich would cut at 80
        Console(width=wide).print(versions_table(versions))
        return 0
    if not args.ref:
        raise ConfigError(f"registry {args.action} needs a reference: NAME[:VERSION]")
    if args.action == "add":
        from tacotune.card import run_facts

        source = Path(args.ref)
        checkpoint = source / "checkpoints" / "model.pt" if source.is_dir() else source
        uri = _registry_mlflow_uri(args.mlflow_uri, source)  # checked before anything is written
        version = registry.register(
            source.name if args.name is None else args.name,  # `--name ""` is refused
            checkpoint,
            source=str(source),
            vocoder=args.vocoder,
            run=run_facts(source) if source.is_dir() else None,  # its best evaluation
        )
        if uri is not None:
            _register_in_mlflow(uri, version)
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
