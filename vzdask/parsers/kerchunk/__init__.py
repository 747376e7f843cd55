"""Kerchunk reference sets (JSON versions 0 and 1, and fsspec's Parquet layout) as ManifestStores.

A reference set maps zarr v2 keys to values: metadata documents
(``.zgroup``/``.zarray``/``.zattrs``) and, for chunk keys, one of

* ``[url, offset, length]`` -- a byte range of a file (a virtual chunk);
* ``[url]`` -- a whole file (its size is looked up with one ``head`` per url);
* ``"base64:..."`` or any other string -- the chunk's bytes, inline (base64,
  or the string's UTF-8 bytes, which is what kerchunk writes for ASCII data).

Version 1 adds ``templates`` (jinja-style ``{{name}}`` substitutions in urls,
and template functions ``{{f(c='x')}}``) and ``gen`` entries that generate
keys over the cartesian product of ranges. Expressions made of names,
numbers, strings, arithmetic and ``%`` formatting are evaluated here,
vectorised; anything beyond that is rendered with jinja2 if it is installed.

Relative urls are relative to the reference set's location (the directory
holding the JSON file, or the Parquet reference directory).

Modules: ``references_json`` (JSON reference sets: versions, ``gen``, chunk
keys), ``references_parquet`` (fsspec's Parquet layout), ``templates`` (the
``{{...}}`` evaluator of version 1) and ``common`` (reading, urls and
assembling the ManifestGroup, shared by both layouts).
"""

from vzdask.parsers.kerchunk.references_json import KerchunkJSONParser, looks_like_kerchunk_json
from vzdask.parsers.kerchunk.references_parquet import KerchunkParquetParser, is_kerchunk_parquet

__all__ = ["KerchunkJSONParser", "KerchunkParquetParser", "is_kerchunk_parquet", "looks_like_kerchunk_json"]
