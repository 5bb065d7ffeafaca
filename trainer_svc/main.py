"""`trainer-svc`: the trainer's entry point."""

from __future__ import annotations

import asyncio

from loraplane.service_main import configure_logging, serve_until_signalled
from trainer_svc.server import create_server
from trainer_svc.settings import TrainerSettings


def main() -> None:
    settings = TrainerSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve_until_signalled(lambda: create_server(settings), "trainer-svc"))


if __name__ == "__main__":
    main()
