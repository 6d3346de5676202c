"""Train and ship tacotune's Russian base voice (src/tacotune/voices/, README "Base voices").

Three steps, each resumable, each writing only into its own directories:

    python scripts/base_voice.py corpus -w WORK   # WORK/corpus (espeak-ng voices) + WORK/prepared
    python scripts/base_voice.py train -w WORK    # WORK/run; again to continue it (--resume)
    python scripts/base_voice.py ship -w WORK     # fp16 weights, sha256, model card -> voices/

`train` runs `tacotune train` with the fixed recipe below on one CPU thread (a background
job that leaves the other cores usable); stop it with Ctrl-C at any time, it saves and a
second `train` continues where it stopped. `ship` takes the run's best checkpoint (by the
voice metric), stores its tensors in fp16 (half the size; they are cast back to fp32 when
a run warm-starts from them), records its sha256 in voices.json and writes the model card
from the run's own numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from tacotune.checkpoint import INFERENCE_KEYS, load_checkpoint, save_checkpoint
from tacotune.files import file_sha256
from tacotune.runlog import read_jsonl
from tacotune.voices import MANIFEST

REPO_ROOT = Path(__file__).resolve().parent.parent
VOICES_DIR = REPO_ROOT / "src" / "tacotune" / "voices"
NAME = "ru-base-small"
PRESET = "demo.yaml"  # the model size auto chooses on a CPU: the base must fit it
RECIPE = (  # on top of PRESET; the base trains on many hours, so no early stop
    "train.threads=1",
    "train.max_steps=100000",
    "train.eval_every=250",
    "supervision.patience=0",
)
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import make_base_corpus as corpus_script  # noqa: E402  (beside this file)


def tacotune(*args: str) -> None:
    """Run the tacotune CLI of this interpreter's environment."""
    subprocess.run([sys.executable, "-m", "tacotune", *args], check=True)


def make_corpus(work: Path) -> None:
    """WORK/corpus from espeak-ng and fortunes-ru, then WORK/prepared."""
    if not (work / "corpus").exists():
        subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "scripts" / "make_base_corpus.py"),
                "-o",
                str(work / "corpus"),
            ],
            check=True,
        )
    if not (work / "prepared").exists():
        tacotune("prepare", str(work / "corpus"), "-o", str(work / "prepared"), "--config", PRESET)


def train(work: Path) -> None:
    """WORK/run with the recipe, or continue it."""
    run = work / "run"
    if (run / "checkpoints" / "last.pt").exists():
        tacotune("train", str(work / "prepared"), "--resume", str(run))
        return
    overrides = [arg for key in RECIPE for arg in ("--set", key)]
    tacotune("train", str(work / "prepared"), "-o", str(run), "--config", PRESET, *overrides)


def best_evaluation(run: Path) -> dict[str, Any]:
    """The evaluation of the run's best checkpoint (lowest score)."""
    evaluations = [r for r in read_jsonl(run / "metrics.jsonl") if "score" in r]
    if not evaluations:
        sys.exit(f"error: {run} has no evaluation yet; train it longer")
    return min(evaluations, key=lambda r: r["score"])


def ship(work: Path, name: str) -> None:
    """fp16 inference checkpoint + sha256 + model card into src/tacotune/voices/."""
    run = work / "run"
    best = best_evaluation(run)
    payload = load_checkpoint(run / "checkpoints" / "best.pt")
    payload = {key: payload[key] for key in INFERENCE_KEYS}
    payload["model"] = {
        k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()
    }
    target = VOICES_DIR / f"{name}.pt"
    save_checkpoint(target, payload)
    digest = file_sha256(target)
    report = json.loads((work / "prepared" / "report.json").read_text(encoding="utf-8"))
    totals = report["totals"]
    card = model_card(name, payload, best, totals, digest, target.stat().st_size)
    (VOICES_DIR / f"{name}.md").write_text(card, encoding="utf-8")
    manifest_path = VOICES_DIR / MANIFEST
    manifest = (
        json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    )
    config = payload["config"]
    manifest[name] = {
        "file": target.name,
        "sha256": digest,
        "card": f"{name}.md",
        "model": config["model"],
        "audio": config["audio"],
        "summary": (
            f"{totals['hours_kept']:.1f} h of {len(corpus_script.VOICES)} espeak-ng Russian "
            f"voices, {best['step']} steps, voice metric {best['free/mcd_ratio']:.2f}"
        ),
        "license": "GPL-2.0-or-later",  # its texts' (fortunes-ru); the card says why
    }
    manifest_path.write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"shipped {target} ({target.stat().st_size / 2**20:.1f} MiB, sha256 {digest})")


def model_card(
    name: str,
    payload: dict[str, Any],
    best: dict[str, Any],
    totals: dict[str, Any],
    digest: str,
    size: int,
) -> str:
    """The model card, from the run's and the corpus's own numbers."""
    config = payload["config"]
    model, audio = config["model"], config["audio"]
    parameters = sum(t.numel() for t in payload["model"].values() if isinstance(t, torch.Tensor))
    voices = ", ".join(f"`{v}` ({wpm} wpm, pitch {p})" for v, wpm, p in corpus_script.VOICES)
    sizes = (
        f"embedding {model['embedding_dim']}, encoder {model['encoder_dim']}, "
        f"decoder {model['decoder_rnn_dim']}, r={model['reduction_factor']}"
    )
    rows = {
        "model": f"Tacotron2, {parameters / 1e6:.1f} M parameters ({PRESET}: {sizes})",
        "mels": f"{audio['sample_rate']} Hz, {audio['n_mels']} bins, hop {audio['hop_length']} "
        "(a corpus at another rate is resampled by `prepare`)",
        "text": f"tacotune's symbol table, stress `{payload['text_frontend']['stress']}`",
        "steps": f"{best['step']} (the run's best score), batch 16, one CPU thread, "
        f"{best.get('time/train_seconds', 0.0) / 60:.0f} minutes of training",
        "voice metric": f"{best['free/mcd_ratio']:.3f} on its own validation utterances "
        "(MCD ratio: 0 = the recording, 1 = chance)",
        "attention": f"diagonality {best.get('free/diagonality', float('nan')):.2f}, end "
        f"reached {best.get('free/reached_end', float('nan')):.2f} (free-running)",
        "file": f"`{name}.pt`, {size / 2**20:.1f} MiB, fp16 tensors, sha256 `{digest}`",
    }
    table = "\n".join(f"| {key} | {value} |" for key, value in rows.items())
    heldout = corpus_script.HELDOUT_VOICE[0]
    return f"""# {name}: tacotune's Russian base voice (small)

Weights to **fine-tune** a new Russian voice from, not a voice to use as it is:
`tacotune train PREPARED -o RUN --warm-start base` (or `tacotune auto`, which does it by
default) for any model of this size ({PRESET}).

| | |
|---|---|
{table}

## Data
{totals["rows"]} sentences, {totals["kept"]} kept by `tacotune prepare`
({totals["hours_kept"]:.2f} h; the rest are named in the prepared report: clipped samples,
too short, two malformed stress marks). **Synthetic speech**: espeak-ng 1.51 (Debian)
reading each sentence once with one of
{len(corpus_script.VOICES)} variants of its Russian voice: {voices}. The demo corpus's voice
(plain `ru`, 165 wpm, pitch 50) and the benchmark's unseen voice (`{heldout}`) are never
used, and no demo sentence is in it.

Text: the Russian aphorisms and quotations of Debian's `fortunes-ru` package (fortune-mod-ru
by Pavel Maryanov, GPL-2), selected categories, attributions dropped, cut at sentence ends,
3–{corpus_script.MAX_WORDS} words, only sentences tacotune's frontend reads whole.

## How it was made
`python scripts/base_voice.py corpus|train|ship -w WORK` (scripts/base_voice.py): the corpus
from `scripts/make_base_corpus.py`, `tacotune prepare --config {PRESET}`, `tacotune train
--config {PRESET}` with {", ".join(RECIPE)}, then this file.

## Intended use and limits
- Fine-tuning: it knows how Russian letters map to sound and how to align text with speech,
  so a new voice needs minutes instead of hours (README, benchmark "time to voice").
- It has only heard a formant synthesizer. It adapts fastest to voices like that; a
  recorded human voice still gains its alignment, but more of the sound must be re-learned.
- Not a voice to publish: it averages several robotic voices.

## License
The weights are derived from GPL-2 text (fortunes-ru) spoken by GPL-3 software (espeak-ng,
whose output is not itself covered by the GPL); they are distributed under the GPL-2-or-later
terms of their text, like the text itself. A voice fine-tuned from them on your own
recordings is a derived model: check that these terms suit your use.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["corpus", "train", "ship"])
    parser.add_argument("-w", "--work", type=Path, required=True, help="work directory")
    parser.add_argument("--name", default=NAME, help="the base voice's name")
    args = parser.parse_args()
    if args.step == "corpus":
        make_corpus(args.work)
    elif args.step == "train":
        train(args.work)
    else:
        ship(args.work, args.name)


if __name__ == "__main__":
    main()
