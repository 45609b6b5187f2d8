"""``TrainConfig``: everything that determines a training run, saved as ``RUN/config.json``.

Its own module so that the trainer and the run folder (:mod:`avx.fuse.run_folder`) both
read one definition; it round-trips through JSON with
:func:`avx.serialization.to_dict` / :func:`~avx.serialization.from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from avx.errors import AvxError
from avx.fuse import metrics as M
from avx.fuse.data import DataConfig
from avx.fuse.dropout import ModalityDropout
from avx.fuse.end2end import EndToEndConfig
from avx.fuse.tasks import REGRESSION_LOSSES
from avx.serialization import from_dict, to_dict

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine-restarts", "warmup-cosine", "step", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (written to ``RUN/config.json``).

    Optimisation: ``optimizer`` (adam, adamw with ``betas``; sgd with ``momentum``),
    ``lr``, ``weight_decay``; ``scheduler``: ``cosine-restarts`` (SGDR, ``t0`` epochs,
    ``t_mult``, stepped per batch), ``warmup-cosine`` (``warmup`` epochs linear, then
    cosine to 0), ``step`` (x ``gamma`` every ``step_size`` epochs), ``plateau``
    (x ``gamma`` when the dev metric stalls for ``step_size`` epochs); ``grad_clip``
    (max L2 norm, 0 = off); ``patience`` (early stopping on dev, 0 = off); ``amp``
    (float16 autocast on CUDA only).

    Robustness: ``dropout`` is the modality dropout applied to every training batch
    (none, softhard, noise, prob:P; :mod:`avx.fuse.dropout`).

    End to end: ``end_to_end`` (:class:`~avx.fuse.end2end.EndToEndConfig`) puts
    trainable backbones in front of the method, fed from the stored crops and waveform;
    None trains on cached features.

    Task: ``class_weights`` (none, inverse, effective[:beta]), ``sampling`` (none,
    over, under), ``regression_loss`` (ccc, ccc+mse, mse, l1), ``threshold`` for
    multi-label decisions (None: share > 1/C; a number; ``tune`` on dev).
    """

    store: str
    method: str
    data: DataConfig
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "none"
    t0: int = 1
    t_mult: int = 2
    warmup: int = 1
    step_size: int = 10
    gamma: float = 0.1
    grad_clip: float = 0.0
    patience: int = 0
    select_metric: str | None = None
    class_weights: str = "none"
    sampling: str = "none"
    regression_loss: str = "ccc"
    dropout: str = "none"
    threshold: float | str | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    tensorboard: bool = False
    bootstrap: int = 1000
    method_config: dict[str, Any] = field(default_factory=dict)
    end_to_end: EndToEndConfig | None = None

    def check(self) -> None:
        if self.end_to_end is not None:
            self.end_to_end.check()
        if self.optimizer not in OPTIMIZERS:
            raise AvxError(f"unknown optimizer '{self.optimizer}'; valid: {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise AvxError(f"unknown scheduler '{self.scheduler}'; valid: {', '.join(SCHEDULERS)}")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise AvxError(
                f"unknown regression loss '{self.regression_loss}'; valid: {', '.join(REGRESSION_LOSSES)}"
            )
        if self.select_metric is not None:
            M.get_scorer(self.select_metric, self.data.task)
        if isinstance(self.threshold, str) and self.threshold != "tune":
            raise AvxError(f"--threshold takes a number or 'tune', not '{self.threshold}'")
        ModalityDropout.parse(self.dropout)
        if self.epochs < 1 or self.batch_size < 1:
            raise AvxError("--epochs and --batch-size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, d)
