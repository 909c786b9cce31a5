"""``python -m saliency_fast ...`` runs the command-line tool."""

from saliency_fast.cli import main

raise SystemExit(main())
