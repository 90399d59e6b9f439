#!/usr/bin/env python3
"""Write one synthetic bias frame: ``python generate_bias.py --help``."""

import sys

from bias_pipeline.entry import generate

if __name__ == "__main__":
    sys.exit(generate(prog="generate_bias.py"))
