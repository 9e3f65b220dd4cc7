"""``python -m autolora`` (and ``accelerate launch -m autolora``) runs the command-line interface."""

from autolora.cli import main

raise SystemExit(main())
