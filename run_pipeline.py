#!/usr/bin/env python3
"""Run the bias pipeline: ``python run_pipeline.py --help``."""

import sys

from bias_pipeline.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(prog="run_pipeline.py"))
