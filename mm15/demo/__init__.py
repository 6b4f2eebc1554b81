"""``mm15 demo``: a recipe of the one training loop on built-in synthetic data.

* :mod:`mm15.demo.config`: :class:`DemoConfig`, one nested config per stage;
* :mod:`mm15.demo.recipe`: the stages as :class:`~mm15.train.config.StageConfig` s run by
  :func:`mm15.train.loop.train`, and :func:`run_demo`;
* :mod:`mm15.demo.encoder`: the encoder warm-up (the one stage outside the loop);
* :mod:`mm15.demo.data`: the synthetic corpus; :mod:`mm15.demo.report`: the report.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DemoConfig", "run_demo"]


def __getattr__(name: str) -> Any:  # lazy: mm15.demo.data imports without torch or the trainer
    if name == "DemoConfig":
        from mm15.demo.config import DemoConfig

        return DemoConfig
    if name == "run_demo":
        from mm15.demo.recipe import run_demo

        return run_demo
    raise AttributeError(f"module 'mm15.demo' has no attribute {name!r}")
