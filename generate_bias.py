#!/usr/bin/env python3
"""Write one synthetic bias frame: ``python generate_bias.py --help``."""

import sys

from bias_pipeline.cli import generate_main

if __name__ == "__main__":
    sys.exit(generate_main(prog="generate_bias.py"))
