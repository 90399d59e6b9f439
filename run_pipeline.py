#!/usr/bin/env python3
"""Run the bias pipeline: ``python run_pipeline.py --help``."""

import sys

from bias_pipeline.entry import run

if __name__ == "__main__":
    sys.exit(run(prog="run_pipeline.py"))
