"""mm15's transformers processor, for ``trust_remote_code`` loading (``auto_map`` in
processor_config.json).

Needs the mm15 package installed (``pip install`` the mm15 repository); with it, ``import mm15``
registers this class and no remote code is needed (docs/transformers.md in that repository).
"""

from mm15.hf.processing import MM15Processor

__all__ = ["MM15Processor"]
