"""The projection files (`reconstruction_mlp`, `alignment_mlp`): llm2vec-gen's ProjectionModel,
saved by `torch.save({"state_dict": ..., "config": ...})`.

Read with `torch.load(weights_only=True)` only: a file that needs anything but tensors and
plain containers to unpickle is refused, never run. Published checkpoints use the one shape
train.py builds, a single `Linear` applied to each pooled position (`pooling_mode =
"linear"`, `size = 1`); the package's other modes are refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.models.protocol import ModelLoadError


@dataclass(frozen=True)
class Projection:
    name: str
    weight: torch.Tensor  # (output_dim, input_dim)
    bias: torch.Tensor  # (output_dim,)

    @property
    def input_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.weight.shape[0])

    def to(self, device: str) -> Projection:
        return Projection(self.name, self.weight.to(device), self.bias.to(device))

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(states, self.weight, self.bias)


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ModelLoadError(f"{path}: {exc.strerror or exc}") from None
    except Exception as exc:
        # UnpicklingError for a pickle that would construct objects or call functions.
        raise ModelLoadError(
            f"{path}: refused; not a plain tensor file (weights_only loading: {type(exc).__name__})"
        ) from None


def load_projection(path: Path) -> Projection:
    """A projection as float32 tensors, checked against the one shape the package trains."""
    data = _read(path)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise ModelLoadError(f"{path}: expected llm2vec-gen's {{'state_dict', 'config'}} projection file")
    config = data.get("config")
    if not isinstance(config, dict):
        config = {}
    mode, size = config.get("pooling_mode", "linear"), config.get("size", 1)
    if mode != "linear" or size != 1:
        raise ModelLoadError(f"{path}: projection pooling_mode {mode!r} with size {size} is not supported")
    state = data["state_dict"]
    weight, bias = state.get("projection.weight"), state.get("projection.bias")
    if set(state) != {"projection.weight", "projection.bias"} or not (
        isinstance(weight, torch.Tensor)
        and isinstance(bias, torch.Tensor)
        and weight.dim() == 2
        and bias.shape == (weight.shape[0],)
    ):
        raise ModelLoadError(f"{path}: expected only projection.weight (out, in) and projection.bias (out,)")
    return Projection(path.name, weight.float(), bias.float())


def chain(projections: list[Projection], hidden_size: int) -> int:
    """Check that each projection takes the previous one's output; the final width."""
    width = hidden_size
    for projection in projections:
        if projection.input_dim != width:
            raise ModelLoadError(
                f"{projection.name}: takes {projection.input_dim} dimensions, but receives {width}"
            )
        width = projection.output_dim
    return width
