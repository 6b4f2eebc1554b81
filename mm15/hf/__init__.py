"""mm15 as native Hugging Face transformers classes (docs/transformers.md).

``import mm15`` arranges for :mod:`mm15.hf.register` to register the config, the model
(``AutoModelForImageTextToText``) and the processor with transformers' Auto classes, without
remote code, when transformers' Auto modules load; ``mm15 export --hf OUT --model DIR``
(:mod:`mm15.hf.export`) writes a directory they load.  Modules:

* :mod:`mm15.hf.configuration`: ``MM15Config`` (``model_type: "mm15"``) with the decoder as a
  native Llama / Qwen2 / Qwen2-MoE ``text_config``;
* :mod:`mm15.hf.weights`: mm15 checkpoint tensors → the HF model's names;
* :mod:`mm15.hf.modeling`: ``MM15ForConditionalGeneration`` (mm15's ViT and C-Abstractor, and
  transformers' own causal LM built from ``text_config``);
* :mod:`mm15.hf.processing`: ``MM15Processor``, which calls mm15's one input pipeline;
* :mod:`mm15.hf.remote`: the ``auto_map`` code files copied into an export for
  ``trust_remote_code`` users (they import this package).

This package imports transformers only in the modules above, never on ``import mm15``.
"""
