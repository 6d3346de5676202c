"""The package's shape: the core loads without the operations layer, and the presets ship
inside the wheel (an installed, non-editable copy finds them)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _loaded_after(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    script = (
        f"import sys\n{statement}\n"
        f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


OPERATIONS = (
    "tacotune.train.loop",
    "tacotune.vocoder.train",
    "tacotune.vocoder.session",
    "tacotune.vocoder.teacher",
    "tacotune.alerts",
    "tacotune.tracking",
    "tacotune.tuning",
    "tacotune.registry",
    "optuna",
    "mlflow",
)


@pytest.mark.parametrize(
    "statement",
    [
        "import tacotune.synthesize",
        "from tacotune.checkpoint import load_checkpoint",
        "import tacotune.train.evaluate",
    ],
)
def test_synthesis_and_checkpoints_load_without_the_training_loop_or_operations(
    statement: str,
) -> None:
    assert _loaded_after(statement, OPERATIONS) == []


def test_the_import_contracts_hold() -> None:
    """No circles, no import up a layer, the core apart from operations (pyproject.toml)."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), "lint-imports is missing: pip install -e '.[dev]'"
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout and " kept" in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_a_built_wheel_installed_elsewhere_finds_its_presets(tmp_path: Path) -> None:
    """Build the wheel, install it without -e into a fresh venv (its dependencies come from
    this environment's site-packages, which holds no tacotune of its own), run the CLI."""
    wheels = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("tacotune-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    with zipfile.ZipFile(wheel) as archive:
        presets = {n for n in archive.namelist() if n.startswith("tacotune/configs/")}
        voices = {n for n in archive.namelist() if n.startswith("tacotune/voices/")}
    assert {"tacotune/configs/base.yaml", "tacotune/configs/demo.yaml"} <= presets
    assert {f"tacotune/voices/{n}" for n in ("voices.json", "ru-base-small.pt")} <= voices
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    # dependencies from here; a plain path line is not processed for .pth files, so this
    # environment's editable tacotune (a .pth of its own) stays invisible there
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = "import tacotune, sys; print(tacotune.__file__)"
    where = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.strip()
    assert where.startswith(str(site)), where
    shown = subprocess.run(
        [str(python), "-m", "tacotune", "config", "--config", "demo.yaml"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "reduction_factor: 4" in shown.stdout
    # the base voice is found, and is the file its sha256 names, inside the installed wheel
    probe = "from tacotune.voices import base_voices; print(base_voices()[0].verified_path())"
    base = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert base.returncode == 0, base.stderr[-2000:]
    assert base.stdout.strip().startswith(str(site)), base.stdout
