"""Run the prediction API with uvicorn (``atelier serve`` and ``python -m serving.server``).

One process by default (``api.workers``): on two cores the second core belongs to Triton. uvloop and
httptools, no access log on the hot path (Prometheus counts requests). SIGTERM/SIGINT stop accepting, finish
in-flight requests, then the app's shutdown drains the prediction log.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from pipelines.config import Settings, get_settings, load_settings

__all__ = ["build_app", "check_bind", "is_loopback", "main", "serve"]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (a name that resolves elsewhere, or 0.0.0.0, is not)."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, host: str) -> None:
    """Refuse to serve without auth on an address other machines can reach, unless the override says so."""
    api = settings.api
    if api.auth_required or is_loopback(host):
        return
    if api.insecure_no_auth_on_public_bind:
        logging.getLogger("atelier.serving").warning(
            "SERVING WITHOUT AUTH ON %s: api.insecure_no_auth_on_public_bind is on; anyone who reaches the port "
            "can use the API", host)
        return
    raise RuntimeError(f"api.auth_required is off and the API would listen on {host} (api.host or --host), "
                       "which is not a loopback address: turn auth on (api.auth_required, ATELIER_API_TOKEN), "
                       "bind 127.0.0.1, or set api.insecure_no_auth_on_public_bind if this is really meant")


def build_app():  # noqa: ANN201 - uvicorn factory
    """The app for the settings of the environment (``ATELIER_PROFILE``/``ATELIER_CONFIG``)."""
    from serving.app import create_app

    return create_app(get_settings())


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The event loop shares the GIL with the prediction-log writer and the Cassandra driver's I/O thread:
    # a busy background thread then delays a request by up to 1 ms instead of Python's default 5 ms.
    sys.setswitchinterval(0.001)
    host, port = host or settings.api.host, port or settings.api.port
    check_bind(settings, host)
    if settings.api.workers == 1:
        from serving.app import create_app

        target: object = create_app(settings)
        factory = False
    else:
        target, factory = "serving.server:build_app", True
    print(f"Atelier prediction API on http://{host}:{port} (profile {settings.profile}; "
          f"auth {'on' if settings.api.auth_required else 'off'}; OpenAPI at /docs)", flush=True)
    uvicorn.run(target, host=host, port=port, factory=factory, workers=settings.api.workers, loop="uvloop",
                http="httptools", access_log=False, log_level="warning", timeout_graceful_shutdown=15,
                backlog=2048)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.server", description="Atelier prediction API")
    parser.add_argument("--profile")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    settings = load_settings(profile=args.profile) if args.profile else load_settings()
    try:
        serve(settings, args.host, args.port)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
