"""mm15's transformers config, for ``trust_remote_code`` loading (``auto_map`` in config.json).

Needs the mm15 package installed (``pip install`` the mm15 repository); with it, ``import mm15``
registers this class and no remote code is needed (docs/transformers.md in that repository).
"""

from mm15.hf.configuration import MM15Config

__all__ = ["MM15Config"]
