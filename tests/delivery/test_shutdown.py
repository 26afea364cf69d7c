"""SIGTERM: a web server that is stopped hands over the pageviews it still holds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import redis

from .conftest import child_env, free_port, wait_until

APP = textwrap.dedent(
    """
    import json, os
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route
    import segment_mw
    from segment_mw.asgi import SegmentMiddleware

    segment_mw.configure(json.loads(os.environ["SHUTDOWN_TEST_SETTINGS"]))

    async def page(request):
        return HTMLResponse("<title>Shop</title>")

    app = SegmentMiddleware(Starlette(routes=[Route("/", page)]))
    """
)

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


def test_uvicorn_stopped_with_sigterm_pushes_its_buffered_pageviews(
    redis_settings, redis_client: redis.Redis, tmp_path
):
    (tmp_path / "shutdown_app.py").write_text(APP)
    settings = {
        **redis_settings,
        "DESTINATIONS": {"log": {"type": "log"}},
        # A long gathering delay keeps pageviews in the process's buffer until shutdown.
        "BUFFER_MAX_DELAY": 30.0,
    }
    port = free_port()
    env = child_env(SHUTDOWN_TEST_SETTINGS=json.dumps(settings))
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "shutdown_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: _answers(url), 20.0, "uvicorn to start")
        headers = {"user-agent": BROWSER, "sec-fetch-mode": "navigate"}
        with httpx.Client() as http:
            for n in range(20):
                assert http.get(f"{url}?n={n}", headers=headers).status_code == 200
        stream = f"{redis_settings['QUEUE_PREFIX']}:log"
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)  # uvicorn re-raises SIGTERM once it has shut down
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # _answers' probe made one pageview of its own.
    assert redis_client.xlen(stream) >= 20


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=0.5, headers={"user-agent": "probe"})
    except httpx.HTTPError:
        time.sleep(0.05)
        return False
    return True
