"""mm15: an open implementation of Apple's MM1.5 multimodal LLMs."""

from mm15.hf.register import register_lazily

__version__ = "0.1.0"

# transformers' AutoConfig / AutoModelForImageTextToText / AutoProcessor learn the "mm15" model
# type when their modules load (nothing of transformers is imported here; mm15.hf.register).
register_lazily()
