"""``python -m bias_pipeline COMMAND [options]``: the package's commands under one name.

``run`` is the pipeline (``run_pipeline.py``, ``bias-pipeline``), ``generate`` one synthetic
frame (``generate_bias.py``, ``generate-bias``), ``simulate`` a simulated raw data set
(``python -m bias_pipeline.simulate``), ``inspect`` a summary of a model or an output folder,
``verify`` a model checked on new bias frames and ``compare`` two models of one sensor
(the table is :data:`bias_pipeline.entry.COMMANDS`; ``bias-pipeline COMMAND`` does the same).
Options without a command (``python -m bias_pipeline --demo --output-dir out``) run the
pipeline, as this module did before it had commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .entry import dispatch, starting

PROG = "python -m bias_pipeline"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; see :func:`bias_pipeline.entry.usage`.

    Parameters
    ----------
    argv
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The command's exit code; 2 for an unknown command.
    """
    with starting(PROG):
        return dispatch(list(sys.argv[1:] if argv is None else argv), PROG)


if __name__ == "__main__":
    sys.exit(main())
