"""`python -m tacotune` runs the command-line interface."""

from tacotune.cli import main

raise SystemExit(main())
