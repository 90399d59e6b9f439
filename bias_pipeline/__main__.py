"""``python -m bias_pipeline`` runs the pipeline command."""

import sys

from .cli import run_main

sys.exit(run_main(prog="python -m bias_pipeline"))
