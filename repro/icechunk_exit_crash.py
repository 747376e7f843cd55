"""Reproduces a crash at interpreter exit in Icechunk (2.3.0, with zarr 3.4.2), without vzdask.

List a read-only Icechunk session's store through zarr, then let Python
finalize normally: now and then (about 1 run in 10 to 25 on a 2-core machine
whose cores are both busy) the process ends with status 139 (SIGSEGV) after
printing its result. Reading an array without listing, or writing and
committing, did not crash in 20 runs each; obstore's ranged reads did not
either. This is why ``vzdask.process.exit_process`` (the CLI, ``python -m
vzdask.demo``) and the test suite's conftest end the process with
``os._exit`` once Icechunk has been imported, and exit normally otherwise.

Run::

    for i in $(seq 25); do timeout 60 yes >/dev/null & timeout 60 yes >/dev/null &
      .venv/bin/python repro/icechunk_exit_crash.py >/dev/null; echo $?; done
"""

import tempfile

import icechunk
import numpy as np
import zarr

path = tempfile.mkdtemp()
repo = icechunk.Repository.create(icechunk.local_filesystem_storage(path))
session = repo.writable_session("main")
zarr.create_array(session.store, name="a", shape=(10,), chunks=(5,), dtype="f8")[:] = np.arange(10.0)
session.commit("one array")

group = zarr.open_group(repo.readonly_session("main").store, mode="r")
print({name: array.nchunks_initialized for name, array in group.arrays()})
