"""obstore alone: an async request to a refused port, then a normal interpreter exit, now and then aborts.

Run it a few times: ``for i in 1 2 3 4 5 6; do python repro/obstore_exit_abort.py; echo $?; done``.
Measured 2026-12-05 (obstore as pinned in the venv, busy 2-core machine): exit 134 (SIGABRT) in 1 of 2
runs, then 3 of 6, with ``head_async``; 0 of 3 with the blocking ``head``. vzdask.process.exit_process ends a failed
command with os._exit because of it.
"""

import asyncio

import obstore
from obstore.store import HTTPStore


async def main() -> None:
    store = HTTPStore.from_url("http://127.0.0.1:9", client_options={"allow_http": True},
                               retry_config={"max_retries": 1})
    try:
        await obstore.head_async(store, "file.nc")
    except Exception as err:  # the refused connection: expected
        print(type(err).__name__)


asyncio.run(main())
