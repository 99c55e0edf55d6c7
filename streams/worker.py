"""Run the stream worker: create topics, start the sequencer and the faust app."""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from .settings import Settings

log = logging.getLogger("marginwatch.worker")


def run_worker(args) -> int:
    """``marginwatch worker``: blocks until SIGINT/SIGTERM; exit code of the worker."""
    import faust

    from .app import create_app
    from .topics import ensure_topics

    overrides = {}
    if getattr(args, "web_port", None):
        overrides["web_port"] = args.web_port
    settings = Settings.from_env(**overrides)
    loglevel = (getattr(args, "loglevel", None) or settings.log_level).upper()
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("settings: %s", settings.describe())
    asyncio.run(ensure_topics(settings))
    mapp = create_app(settings)
    app = mapp.app

    @app.task
    async def sequencer():
        try:
            await mapp.sequencer.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # the supervisor restarts us: never run without the sequencer
            log.exception("sequencer failed; stopping the worker")
            os._exit(3)

    @app.on_after_configured.connect
    def _noop(app_, **kwargs):  # keep faust's configuration hook quiet
        pass

    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
