"""A command's process around Icechunk's Rust runtime: its log level at the start, how the process ends."""

from __future__ import annotations

import logging
import os
import sys


#: Libraries whose runtimes can crash the interpreter's finalization after a finished command (see exit_process).
CRASHES_AT_EXIT = ("icechunk", "pyarrow")


def exit_process(code: int) -> None:
    """End the process with ``code``.

    Normally that is ``sys.exit``. Once Icechunk has been imported, the
    process ends with ``os._exit`` after flushing its output: Icechunk's Rust
    runtime, after a store listing, now and then crashes (SIGSEGV) while
    Python finalizes, turning a finished command into exit status 139
    (``repro/icechunk_exit_crash.py`` shows it without vzdask). HDF5 files
    used to crash at exit too; the parser now closes every identifier of a
    file it opened (issue 22), so that needs no workaround.

    pyarrow is on the list too: ``vzdask info refs.parq`` (kerchunk Parquet
    references, read with pyarrow) ended with SIGABRT ("terminate called
    without an active exception", a C++ runtime's) after printing its
    report in 2 of 15 runs on a busy 2-core machine (2026-12-05), while a
    script reading the same Parquet files with pyarrow alone exited 0 in
    15 runs; the library at fault is not isolated yet.

    A failed command ends with ``os._exit`` too: it has nothing left to
    finalize, and obstore's runtime aborts at exit (SIGABRT) now and then
    after a refused connection (``repro/obstore_exit_abort.py``, obstore
    alone), which turned exit status 1 into 134.
    """
    if code == 0 and not any(name in sys.modules for name in CRASHES_AT_EXIT):
        sys.exit(code)
    mfdataset = sys.modules.get("vzdask.mfdataset")
    if mfdataset is not None:  # os._exit skips atexit: stop the process pool's workers here
        mfdataset.shutdown_process_pool()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code)


def quiet_icechunk_logs() -> None:
    """Show only Icechunk's errors, unless ``ICECHUNK_LOG`` says otherwise.

    Icechunk prints Rust ``WARN`` lines to stderr (e.g. that local storage is
    not safe for concurrent commits). ``ICECHUNK_LOG`` is read when icechunk
    is imported; if it is already imported the filter is set directly.
    """
    if "ICECHUNK_LOG" in os.environ:
        return
    os.environ["ICECHUNK_LOG"] = "error"
    icechunk = sys.modules.get("icechunk")
    if icechunk is not None and hasattr(icechunk, "set_logs_filter"):
        icechunk.set_logs_filter("error")
