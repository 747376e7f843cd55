"""The errors vzdask raises: one family, each also an instance of the builtin users already catch.

``except vzdask.errors.VzdaskError`` catches all of them; ``except
ValueError`` / ``OSError`` / ``PermissionError`` / ``RuntimeError`` keep
catching what they caught before the family existed. Messages name the file,
the variable (and chunk, where known) and what is wrong. This module imports
nothing of vzdask, so every other module can use it.
"""

from __future__ import annotations


class VzdaskError(Exception):
    """Base of every error vzdask raises on purpose."""


class ParseError(VzdaskError, ValueError):
    """A file (or one variable of it) that cannot be virtualized; the message names the file and the problem."""


class ChunkReadError(VzdaskError, OSError):
    """Bytes a reference points at could not be read, or were not all there (url, byte range, variable, chunk)."""


class CombineError(VzdaskError, ValueError):
    """Virtual arrays or datasets that cannot be combined as asked (shapes, chunking, dtypes or codecs differ)."""


class CFEncodingMismatchError(CombineError):
    """Files whose CF encoding of one variable differs cannot be concatenated virtually."""


class UnsupportedChunkGridError(VzdaskError, ValueError):
    """An output format that cannot hold an array's chunk grid (kerchunk's zarr v2 metadata: regular grids only)."""


class FileOpenError(VzdaskError, RuntimeError):
    """A file of a multi-file open could not be parsed; the message names it."""


class ReadOnlyStoreError(VzdaskError, PermissionError):
    """Raised on any attempt to write to or delete from a ManifestStore."""


class VzdaskWarning(UserWarning):
    """Base of the warnings vzdask gives."""


class UnsupportedVariableWarning(VzdaskWarning):
    """Variables of a file were left out (``on_unsupported="warn"``); the message lists them with the reasons."""


class RawValuesWarning(VzdaskWarning):
    """Math on a virtual variable that is CF-encoded: it computes the stored values, not the decoded ones."""


__all__ = [
    "CFEncodingMismatchError",
    "ChunkReadError",
    "CombineError",
    "FileOpenError",
    "ParseError",
    "RawValuesWarning",
    "ReadOnlyStoreError",
    "UnsupportedChunkGridError",
    "UnsupportedVariableWarning",
    "VzdaskError",
    "VzdaskWarning",
]
