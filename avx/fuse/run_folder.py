"""A trained run on disk: one ``save_pretrained`` / ``from_pretrained`` pair, no pickle.

Run folders are how labs share results, so loading one must never run code from it.
A run folder holds:

- ``config.json``: the :class:`~avx.fuse.config.TrainConfig` (every field, JSON) plus
  ``extras`` that describe it (run identity, stream provenance, versions);
- ``model.json``: method name, method config, inputs, task, class names, threshold;
- ``model.safetensors``: the selected weights;
- ``normalizer.safetensors``: the training-split mean/std per stream (``mean:STREAM``,
  ``std:STREAM``), reused whenever the run scores other data;
- ``metrics.json``, ``predictions.csv`` and, while training, ``checkpoint/``
  (:mod:`avx.fuse.checkpoint`).

Run folders written by avx before this format hold pickles (``model.pt``, ``last.pt``);
they are refused with a one-line error naming ``avx fuse convert RUN``, which unpickles
them once, on explicit request, and rewrites them in this format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from avx.errors import AvxError
from avx.fuse.checkpoint import LEGACY as LEGACY_CHECKPOINT
from avx.fuse.checkpoint import save_checkpoint
from avx.fuse.config import TrainConfig
from avx.fuse.data import FusionData, Normalizer, StreamInfo
from avx.fuse.methods import METHODS, FusionMethod, create_method
from avx.fuse.methods.base import TaskSpec
from avx.fuse.run_files import LEGACY_MODEL, check_loadable
from avx.serialization import from_dict, load_tensors, save_tensors, to_dict, write_json
from avx.store_schema import open_store

FORMAT = 2
"""``model.json`` format; 1 was the pickled ``model.pt`` of avx <= 0.1 before this module."""

BACKBONES = "backbones"
"""Subfolder of an end-to-end run holding each fine-tuned backbone in its own format."""

EXTRAS = ("run", "names", "stream_provenance", "avx_version", "torch_version")
"""Keys of ``config.json`` that describe the run rather than configure it."""


def run_key(cfg: TrainConfig) -> str:
    """Identity of a run's settings (``--resume`` refuses a folder holding another run)."""
    d = to_dict(cfg)
    d.pop("device", None)
    return json.dumps(d, sort_keys=True, default=str)


def write_config(path: Path, cfg: TrainConfig, extras: dict[str, Any]) -> None:
    """``RUN/config.json``: the config's fields at the top level, then the extras."""
    write_json(path / "config.json", {**_jsonable(to_dict(cfg)), **_jsonable(extras)})


def read_config(path: Path, *, strict: bool = True) -> tuple[TrainConfig, dict[str, Any]]:
    """``(config, extras)`` from ``RUN/config.json``; an unknown key is an error naming the
    file (``strict=False``: ignored, for configs of older avx versions being converted)."""
    f = path / "config.json"
    try:
        d = json.loads(f.read_text())
        extras = {k: d.pop(k) for k in EXTRAS if k in d}
        return from_dict(TrainConfig, d, strict=strict), extras
    except (json.JSONDecodeError, TypeError, ValueError, AvxError) as e:
        raise AvxError(f"{f}: not an avx run config ({e})") from None


def read_config_extras(path: Path) -> dict[str, Any]:
    return read_config(path)[1] if (path / "config.json").exists() else {}


def _jsonable(x: Any) -> Any:
    from avx.fuse.evaluate import jsonable

    return jsonable(x)


@dataclass
class FusionRun:
    """A trained run: its config, model, training normaliser, decision threshold and names.

    ``FusionRun.from_pretrained(path)`` rebuilds it from a run folder without the store;
    ``run.save_pretrained(path)`` writes one (the trainer's own final step).
    """

    path: Path
    config: TrainConfig
    model: FusionMethod
    normalizer: Normalizer
    threshold: float | None
    names: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    # -- writing -------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, *, extras: dict[str, Any] | None = None) -> None:
        """Write ``config.json``, ``model.json``, ``model.safetensors`` and ``normalizer.safetensors``.

        Weights first, the descriptions after, each file atomically: a folder whose
        ``model.json`` exists has complete weights beside it.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        m = self.model
        state = m.state_dict()
        front = m.end_to_end
        end_to_end = None
        if front is not None:  # backbones in their own formats: `avx extract --weights` reads them
            end_to_end = front.export(path / BACKBONES)
            state = front.head_state(state, "front_end.")
        save_tensors(
            path / "model.safetensors", state, metadata={"format": "avx-run", "method": self.config.method}
        )
        save_tensors(path / "normalizer.safetensors", self.normalizer.tensors())
        write_config(path, self.config, extras if extras is not None else self.extras)
        write_json(
            path / "model.json",
            _jsonable(
                {
                    "format": FORMAT,
                    "method": self.config.method,
                    "method_config": to_dict(m.config),
                    "inputs": {s: to_dict(i) for s, i in m.inputs.items()},
                    "task": to_dict(m.task),
                    "names": list(self.names),
                    "threshold": self.threshold,
                    **({"end_to_end": end_to_end} if end_to_end else {}),
                }
            ),
        )

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> FusionRun:
        """Rebuild a run from its folder: JSON and safetensors only, nothing unpickled."""
        path = Path(path)
        check_loadable(path)
        config, extras = read_config(path)
        try:
            b = json.loads((path / "model.json").read_text())
        except json.JSONDecodeError as e:
            raise AvxError(f"{path / 'model.json'}: unreadable ({e})") from None
        if b.get("format") != FORMAT:
            raise AvxError(f"{path / 'model.json'}: format {b.get('format')}, this avx reads {FORMAT}")
        method_cls = METHODS.get(b["method"]).cls
        method_config = from_dict(method_cls.config_class, b["method_config"])
        inputs = {s: from_dict(StreamInfo, i) for s, i in b["inputs"].items()}
        model = create_method(b["method"], inputs, from_dict(TaskSpec, b["task"]), config=method_config)
        front = None
        if b.get("end_to_end"):
            from avx.fuse.end2end import EndToEndConfig, load_end_to_end

            front = load_end_to_end(b["end_to_end"], path, config.end_to_end or EndToEndConfig(()), device)
            model.attach_front_end(front)
        state = load_tensors(path / "model.safetensors")
        try:
            if front is None:
                model.load_state_dict(state)
            else:  # the backbones' weights came from RUN/backbones/
                missing, unexpected = model.load_state_dict(state, strict=False)
                lacking = list(front.head_state(dict.fromkeys(missing), "front_end."))
                if unexpected or lacking:
                    raise RuntimeError(f"\nunexpected keys {unexpected[:3]}, missing keys {lacking[:3]}")
        except RuntimeError as e:
            first = " ".join(str(e).split("\n")[1:2]).strip()
            raise AvxError(
                f"{path / 'model.safetensors'}: does not fit method {b['method']} of this avx ({first})"
            ) from None
        model.to(device).eval()
        normalizer = Normalizer.from_tensors(load_tensors(path / "normalizer.safetensors"))
        return cls(
            path,
            replace(config, device=device),
            model,
            normalizer,
            b["threshold"],
            list(b["names"]),
            extras,
        )

    def data(self, store: str | None = None, *, keep_unlabelled: bool = False) -> FusionData:
        """The run's data selection on its own store (or ``store``), with the saved
        training normalisation (never refitted on the data being evaluated). Only the
        scored ``labels`` are resolved: the sources the loss trained on are not needed
        (another store need not have them)."""
        data = FusionData(
            open_store(store or self.config.store),
            replace(self.config.data, extra_labels=(), train_labels=None),
            align=METHODS.get(self.config.method).needs_alignment,
            keep_unlabelled=keep_unlabelled,
            raw=self.config.end_to_end is not None,
        )
        front = self.model.end_to_end
        if front is not None:  # raw inputs: the method sees what the front end makes of them
            data.info.update(front.infos)
        for s, info in data.info.items():
            if self.model.inputs[s] != info:
                raise AvxError(
                    f"{store}: stream {s} is {info}, the run was trained on {self.model.inputs[s]}"
                )
        data.normalizer = self.normalizer
        return data


def load_run(path: str | Path, device: str = "cpu") -> FusionRun:
    """``FusionRun.from_pretrained(path, device)``."""
    return FusionRun.from_pretrained(path, device)


# -- converting pickled run folders ----------------------------------------------------


def convert_run(path: str | Path) -> list[str]:
    """Rewrite a run folder of an older avx (pickled ``model.pt``/``last.pt``) in this format.

    This unpickles the files, which runs any code they carry: call it only for runs from
    a source you trust. A trials folder converts every ``fold-K`` (``seed-S``). Returns what was
    converted; the pickles are removed once their replacements are written.
    """
    path = Path(path)
    folds = sorted(p for pattern in ("fold-*", "seed-*") for p in path.glob(pattern) if p.is_dir())
    if folds and not (path / "config.json").exists():
        return [x for f in folds for x in convert_run(f)]
    done: list[str] = []
    if (path / LEGACY_MODEL).exists():
        b = torch.load(path / LEGACY_MODEL, map_location="cpu", weights_only=False)
        config, extras = read_config(path, strict=False)
        inputs = {s: StreamInfo(**i) for s, i in b["inputs"].items()}
        method_cls = METHODS.get(b["method"]).cls
        method_config = method_cls.config_class(**b["method_config"])  # pickled: tuples intact
        model = create_method(b["method"], inputs, TaskSpec(**b["task"]), config=method_config)
        model.load_state_dict(b["state_dict"])
        run = FusionRun(
            path, config, model, Normalizer.from_state_dict(b["normalizer"]), b["threshold"], list(b["names"])
        )
        run.save_pretrained(path, extras=extras)
        (path / LEGACY_MODEL).unlink()
        done.append(str(path / LEGACY_MODEL))
    if (path / LEGACY_CHECKPOINT).exists():
        ck = torch.load(path / LEGACY_CHECKPOINT, map_location="cpu", weights_only=False)
        best_score, best_epoch, best_state, bad = ck["best"]
        state = {k: ck[k] for k in ("optimizers", "schedule", "scaler", "generator", "torch_rng", "history")}
        state["best"] = [best_score, best_epoch, bad]
        save_checkpoint(path, ck["epoch"], ck["model"], best_state, state)
        (path / LEGACY_CHECKPOINT).unlink()
        done.append(str(path / LEGACY_CHECKPOINT))
    if not done:
        raise AvxError(f"{path}: nothing to convert (no model.pt or last.pt)")
    return done
