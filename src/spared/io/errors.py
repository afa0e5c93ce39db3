"""Errors of fetching a dataset's files, shared by the download and local-source steps."""

from __future__ import annotations


class DownloadError(OSError):
    """Files could not be fetched or linked; the message says where to place them by hand, or what to fix."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the expected one (a file found on disk is left in place)."""
