"""mm15: an open implementation of Apple's MM1.5 multimodal LLMs."""

__version__ = "0.1.0"
