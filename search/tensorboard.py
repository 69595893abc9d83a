"""Ray's TensorBoard logger with an HParams table in which every searched parameter shows.

Ray's TBXLoggerCallback writes every reported scalar per trial (kept as is) and, at the end
of a trial, an HParams session; but a list-valued parameter (the crop space's offsets) gets
an empty cell there. Here lists are written as text ("32,64,128,256").
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.logger import TBXLoggerCallback
from ray.tune.utils import flatten_dict
from tensorboardX.summary import hparams


logger = logging.getLogger(__name__)


class HParamsLogger(TBXLoggerCallback):
    """TBXLoggerCallback whose HParams table shows list-valued parameters as text."""

    def _try_log_hparams(self, trial, result: dict[str, Any]) -> None:
        params = {key: _hparam(value) for key, value in flatten_dict(trial.evaluated_params).items()
                  if value is not None}
        try:
            writer = self._trial_writer[trial].file_writer
            for summary in hparams(hparam_dict=params, metric_dict=result):  # experiment, start, end
                writer.add_summary(summary)
        except Exception:  # runs in Tune's controller: a logging failure must not end the search
            logger.exception("could not write the HParams of trial %s", trial)


def _hparam(value: Any) -> Any:
    """Numbers, strings and bools as they are (integers stay integers); lists as text."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value if isinstance(value, (bool, int, float, str)) else str(value)
