"""The ``mm15`` command line (:mod:`mm15.cli.main`); ``python -m mm15.cli`` runs it too."""

from mm15.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
