"""One service process: ``python -m reference_platform.serve auth|backend --fd N``.

Started by the launcher, which binds the listening socket itself (so port 0 and
"port in use" are settled before any child starts) and passes it down as a file
descriptor.  Settings arrive as JSON in ``REFPLAT_SETTINGS``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import socket
import sys
import time

import uvicorn

from .config import Settings


def _raise_open_file_limit() -> None:
    # A thousand WebSockets plus pools need more than the common soft limit of 1024 descriptors.
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_platform.serve")
    parser.add_argument("service", choices=["auth", "backend"])
    parser.add_argument("--fd", type=int, required=True, help="listening socket inherited from the launcher")
    parser.add_argument("--settings-stdin", action="store_true",
                        help="read the settings JSON from stdin (the launcher starts us before the databases "
                        "are ready, so the imports overlap with PostgreSQL's start)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"[{args.service}] %(levelname)s %(name)s: %(message)s")
    if args.service == "auth":
        from .auth_service import create_app
    else:
        from .backend_service import create_app
    if args.settings_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            return 3  # the launcher gave up before the databases were ready
        settings = Settings(**json.loads(line))
    else:
        settings = Settings.from_env()
    _raise_open_file_limit()
    sock = socket.socket(fileno=args.fd)
    config = uvicorn.Config(
        create_app(settings),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        ws="websockets-sansio",
        ws_per_message_deflate=False,  # ~50 KiB less memory per socket; chat frames are small
        ws_max_size=16 * 1024 * 1024,  # the app enforces max_frame_bytes with an error frame
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    profile_dir = os.environ.get("REFPLAT_PROFILE_DIR")
    if profile_dir:  # for finding hot spots: one cProfile dump per service
        import cProfile
        import signal

        # uvicorn re-raises SIGTERM after its shutdown; turn that into an exit that runs `finally`.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        profiler = cProfile.Profile(time.process_time)  # CPU time: the machine may be busy
        profiler.enable()
        try:
            server.run(sockets=[sock])
        finally:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"{args.service}.prof"))
    else:
        server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
