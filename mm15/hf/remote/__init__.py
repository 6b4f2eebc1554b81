"""The ``auto_map`` code files ``mm15 export --hf`` copies into an export, for users who load it
with ``trust_remote_code=True``.  Each only re-exports a class of :mod:`mm15.hf`: the mm15
package must be installed where the export is loaded (docs/transformers.md).  With it
installed, ``import mm15`` registers the same classes and no remote code is needed."""
