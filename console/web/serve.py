"""Run the web console's gateway on uvicorn in this process (`citypost web`, as the system
starts it) until SIGINT or SIGTERM."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn

from console.web.gateway import Gateway, create_app

START_TIMEOUT_S = 10.0


def run_gateway(gateway: Gateway, host: str, port: int, ready_file: Path | None = None) -> None:
    """Serve in this thread (uvicorn's own signal handlers); write the URL to `ready_file`
    once serving."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(gateway),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # The event streams are long-lived: don't wait for them to end on stop.
            timeout_graceful_shutdown=1,
        )
    )
    if ready_file is not None:

        def announce() -> None:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not server.started:
                if server.should_exit or time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            temp = ready_file.with_name(ready_file.name + ".tmp")
            temp.write_text(f"http://{host}:{port}\n")
            temp.replace(ready_file)

        threading.Thread(target=announce, name="web-ready", daemon=True).start()
    server.run()
