"""mm15 as a vLLM out-of-tree model (docs/serving.md, "Serving with vLLM"; pinned to vLLM 0.32).

vLLM finds :func:`register` through the ``vllm.general_plugins`` entry point in pyproject.toml
and calls it in every process it starts; it registers

* the ``mm15`` model type with transformers' ``AutoConfig`` (:class:`mm15.hf.configuration.MM15Config`),
  so vLLM parses the ``config.json`` of an ``mm15 export --hf`` directory;
* the architecture ``MM15ForConditionalGeneration`` with vLLM's ``ModelRegistry``, by module path
  (:mod:`mm15.vllm.model`), so nothing of vLLM's model code loads before vLLM asks for it.

Modules: :mod:`mm15.vllm.inputs` (a prompt's images through mm15's input pipeline; no vLLM),
:mod:`mm15.vllm.processing` (vLLM's processing-info / dummy-inputs / processor trio),
:mod:`mm15.vllm.model` (the model).  Only the last two import vLLM, and nothing imports them but
vLLM, so ``import mm15`` and the ``mm15`` CLI never need vLLM.
"""

from __future__ import annotations

ARCHITECTURE = "MM15ForConditionalGeneration"
MODEL_PATH = "mm15.vllm.model:MM15ForConditionalGeneration"


def register() -> None:
    """Register mm15 with transformers and vLLM (idempotent: vLLM calls it in every process)."""
    from vllm import ModelRegistry

    import mm15.hf.configuration  # noqa: F401  (registers MM15Config with AutoConfig on import)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_PATH)
