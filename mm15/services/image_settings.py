"""Inference-time image settings (the paper's Table 2): one function for every verb.

``n_min`` / ``n_max`` and the rest of :class:`mm15.config.ImageConfig` (resolution, split mode,
overview, indicator, …) may differ at inference from what the checkpoint was trained with: Table 2
raises ``n_max`` without retraining.  ``mm15 eval``, ``serve``, ``chat`` and ``split`` take them
as the ``image`` field of their configs (``--set image.n_max=16``, or the ``--n-max`` shorthand):
ImageConfig fields by name, applied over the checkpoint's (or preset's) own by
:func:`with_image_settings`.  Light imports only: the verbs' parsers import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mm15.config import ImageConfig, ModelConfig, check_model_config
from mm15.config_json import from_dict, to_dict


def check_image_settings(settings: Mapping[str, Any]) -> None:
    """A ValueError when ``settings`` names a field ImageConfig lacks or gives one a value of
    the wrong type or an unknown choice (what can be known without the model's own config)."""
    _image(to_dict(ImageConfig()), settings)


def with_image_settings(
    cfg: ModelConfig, settings: Mapping[str, Any], *, whose: str = "the model's"
) -> ModelConfig:
    """``cfg`` with ``settings`` (ImageConfig fields by name) over its image settings; ``cfg``
    itself is left alone.  Bad names, types, choices and sizes are a ValueError naming the
    field; ``whose`` names ``cfg`` in the message about ``n_min`` / ``n_max``."""
    if not settings:
        return cfg
    image = _image(to_dict(cfg.image), settings)
    if not 1 <= image.n_min <= image.n_max:
        raise ValueError(
            f"image settings: need 1 <= n_min <= n_max, got ({image.n_min}, "
            f"{image.n_max}) ({whose} are ({cfg.image.n_min}, "
            f"{cfg.image.n_max}))"
        )
    out = dataclasses.replace(cfg, image=image)
    try:
        check_model_config(out)
    except ValueError as e:
        raise ValueError(f"image settings: {e}") from None
    patch = cfg.vision.patch_size
    if image.resolution < patch:
        raise ValueError(
            f"image settings: image.resolution ({image.resolution}) is smaller "
            f"than one {patch}px patch of the encoder"
        )
    return out


def checkpoint_image_settings(model_dir: str | Path, settings: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of checkpoint ``model_dir`` with ``settings`` applied, read from its
    ``config.json`` alone: bad settings fail before any weights are read."""
    from mm15.config import load_model_config
    from mm15.services.checkpoint import CONFIG_FILE  # torch: only when a verb runs

    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not an mm15 checkpoint (no {CONFIG_FILE})")
    return with_image_settings(load_model_config(str(path)), settings)


def apply_image_settings(model: Any, settings: Mapping[str, Any]) -> None:
    """Make a loaded model plan its images with ``settings`` (:func:`with_image_settings` on
    ``model.cfg``, which prompt encoding, tiling and the serve app read)."""
    model.cfg = with_image_settings(model.cfg, settings)


def _image(base: dict[str, Any], settings: Mapping[str, Any]) -> ImageConfig:
    if not isinstance(settings, Mapping):
        raise ValueError(
            f"image settings must be an object of ImageConfig fields, got {settings!r}"
        )
    try:
        return from_dict(ImageConfig, {**base, **settings}, path="image")
    except (ValueError, TypeError) as e:
        raise ValueError(f"image settings: {e}") from None
