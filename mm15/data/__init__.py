"""Images, video and coordinates in; tiles, token layouts and structured regions out.

Nothing here imports :mod:`mm15.model`.
"""
