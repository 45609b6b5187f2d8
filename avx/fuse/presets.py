"""Named training recipes: a paper's optimisation settings in one word.

A preset fills in what the paper specifies (optimiser, batch size, schedule, loss
weighting) so ``avx fuse train --preset cold-paper`` reproduces the protocol, while any
option given explicitly still wins. Adding a recipe is one :func:`register` call here;
methods keep their own architectural defaults in their config dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from avx.errors import AvxError, UnknownNameError


@dataclass(frozen=True)
class Preset:
    """Defaults for :class:`~avx.fuse.train.TrainConfig` (``train``), its ``DataConfig``
    (``data``) and the method's config (``method_config``), with their source."""

    name: str
    method: str
    source: str
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    method_config: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset '{preset.name}' registered twice")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownNameError("preset", name, sorted(PRESETS))
    return PRESETS[name]


def apply_preset(config: Any, name: str, explicit: set[str] = frozenset()) -> Any:
    """``config`` (a ``TrainConfig``) with preset ``name`` filled in wherever the
    field is not in ``explicit`` (the options the user gave). Method options given in
    ``config.method_config`` override the preset's."""
    p = get_preset(name)
    if "method" in explicit and config.method != p.method:
        raise AvxError(f"preset {name} is for method {p.method}, not {config.method}")
    valid = {f.name for f in fields(config)}
    if bad := set(p.train) - valid:
        raise ValueError(f"preset {name}: unknown training field(s) {sorted(bad)}")
    train = {k: v for k, v in p.train.items() if k not in explicit}
    data = replace(config.data, **{k: v for k, v in p.data.items() if k not in explicit})
    return replace(
        config,
        method=p.method,
        data=data,
        method_config={**p.method_config, **config.method_config},
        **train,
    )


register(
    Preset(
        name="cold-paper",
        method="cold",
        source=(
            "COLD (000) Sec. 5.4: Adam, batch 4, lr 5e-3, weight decay 1e-4, cosine annealing with "
            "warm restarts (T_0 = 1 epoch, T_mult = 2); (1 - CCC) + MSE for regression, class-weighted "
            "cross-entropy for classification; 31 epochs = five SGDR cycles (the paper gives no count)"
        ),
        train={
            "optimizer": "adam",
            "batch_size": 4,
            "lr": 5e-3,
            "weight_decay": 1e-4,
            "scheduler": "cosine-restarts",
            "t0": 1,
            "t_mult": 2,
            "epochs": 31,
            "regression_loss": "ccc+mse",
            "class_weights": "inverse",
        },
    )
)
