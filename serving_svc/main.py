"""`serving-svc`: the serving replica's entry point.

The `__main__` guard is required, not boilerplate: vLLM starts its engine core in a spawned
process, which re-imports the main module and must not start a second server.
"""

from __future__ import annotations

import asyncio

from loraplane.service_main import configure_logging, serve_until_signalled
from serving_svc.server import create_server
from serving_svc.settings import ServingSettings


def main() -> None:
    settings = ServingSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve_until_signalled(lambda: create_server(settings), "serving-svc"))


if __name__ == "__main__":
    main()
