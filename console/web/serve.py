"""Run the web console's gateway on uvicorn, in a thread of the calling process (the demo,
the tests) until stopped."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn

from citypost.errors import InfrastructureError
from console.web.gateway import Gateway, create_app

START_TIMEOUT_S = 10.0


class WebConsole:
    """The gateway's HTTP server on host:port (127.0.0.1; port 0: any free one)."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(
            create_app(gateway),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # The event streams are long-lived: don't wait for them to end on stop.
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="web-console", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> WebConsole:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive():
                raise InfrastructureError(f"the web console did not start on {self.host}")
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"the web console did not start within {START_TIMEOUT_S:g} s"
                )
            time.sleep(0.02)
        # The port the server bound (0 asks for any free one).
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def run_gateway(gateway: Gateway, host: str, port: int, ready_file: Path | None = None) -> None:
    """Serve in this thread until SIGINT or SIGTERM (uvicorn's own handlers); write the URL
    to `ready_file` once serving (`citypost web`, as the demo starts it)."""
    console = WebConsole(gateway, host, port)
    server = console._server
    if ready_file is not None:

        def announce() -> None:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not server.started and time.monotonic() < deadline:
                if server.should_exit:
                    return
                time.sleep(0.02)
            if server.started:
                bound = [s for srv in server.servers for s in srv.sockets]
                url = f"http://{host}:{bound[0].getsockname()[1]}"
                temp = ready_file.with_name(ready_file.name + ".tmp")
                temp.write_text(url + "\n")
                temp.replace(ready_file)

        threading.Thread(target=announce, name="web-ready", daemon=True).start()
    server.run()
