# --- step 5 ---
# (No module docstring or __future__ import here: the lead concatenates the steps' sections.)
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .evaluation import evaluate_masters, write_evaluation
from .model import BiasModel
from .products import unique_labels


@dataclass
class _InMemoryMaster:
    """A master given as an array (the legacy dict form), with what step 5 reads of a master."""

    label: str
    temperature: float
    data: np.ndarray
    n_frames: int

    def load(self) -> np.ndarray:
        """The master's pixels as float32."""
        return np.asarray(self.data, dtype=np.float32)


def evaluate_model(
    a_map: np.ndarray,
    b_map: np.ndarray,
    master_bias_dict: Mapping[float, np.ndarray],
    output_dir: str | Path,
    save_fits: bool = False,
    *,
    frames_per_master: Mapping[float, int] | None = None,
) -> list[dict[str, object]]:
    """Evaluate ``a + b*T`` against masters given as a dict and write into ``output_dir``.

    Parameters
    ----------
    a_map, b_map
        The model maps.
    master_bias_dict
        Temperature [deg C] -> master array.
    output_dir
        The evaluation folder.
    save_fits
        Also write the synthetic, MAE and MAPE FITS.
    frames_per_master
        Temperature -> frames in the master (for titles and the CSV); 0 when unknown.

    Returns
    -------
    list of dict
        One summary row per temperature.
    """
    temps = sorted(master_bias_dict)
    labels = unique_labels(temps)
    masters = [
        _InMemoryMaster(label, t, master_bias_dict[t], (frames_per_master or {}).get(t, 0))
        for label, t in zip(labels, temps, strict=True)
    ]
    model = BiasModel.from_maps(a_map, b_map, temperature_range=(temps[0], temps[-1]) if temps else None)
    return write_evaluation(
        evaluate_masters(model, masters), output_dir, scale_factor=model.scale_factor, save_fits=save_fits,
        total=len(masters),
    )  # fmt: skip
