"""A real headless Chromium driven over the DevTools protocol, for tests of the HTML pages.

``--dump-dom`` shows what a page contains, not how it is laid out; to check a page at a
phone's width (is anything cut off? does the page scroll sideways?) we set the viewport,
measure the laid-out elements and take a screenshot through DevTools. DevTools'
``Runtime.evaluate`` runs outside the page's Content-Security-Policy, so the pages keep
forbidding scripts while we measure them. The websocket client is aiohttp's (already a
dependency).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PHONE, DESKTOP = 390, 1280


class Browser:
    """One headless Chromium for a test; ``visit`` opens a page at a width and evaluates JavaScript."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Browser:
        assert CHROMIUM is not None
        self.process = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if active.exists() and (lines := active.read_text().split()):
                self.port = int(lines[0])
                return self
            assert self.process.poll() is None, "chromium exited"
            time.sleep(0.05)
        raise AssertionError("chromium did not open its DevTools port")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def visit(self, url: str, width: int, script: str, screenshot: Path | None = None) -> Any:
        """Load ``url`` in a ``width``-pixel-wide viewport (a phone's when narrow), return the
        value of ``script`` evaluated in it, and save a full-page PNG to ``screenshot``."""
        return asyncio.run(self._visit(url, width, script, screenshot))

    async def _visit(self, url: str, width: int, script: str, screenshot: Path | None) -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
                target = json.loads(await response.text())
            try:
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    return await _Page(ws).run(url, width, script, screenshot)
            finally:
                async with http.get(f"http://127.0.0.1:{self.port}/json/close/{target['id']}") as response:
                    await response.read()


class _Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = json.loads((await asyncio.wait_for(self.ws.receive(), 60)).data)
            if message.get("id") == call_id:
                assert "error" not in message, message["error"]
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    async def event(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            message = json.loads((await asyncio.wait_for(self.ws.receive(), 60)).data)
            self.events.append(message)

    async def run(self, url: str, width: int, script: str, screenshot: Path | None) -> Any:
        mobile = width < 600
        await self.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=844 if mobile else 900,
            deviceScaleFactor=1, mobile=mobile,
        )  # fmt: skip
        await self.call("Page.enable")
        navigation = await self.call("Page.navigate", url=url)
        assert "errorText" not in navigation, navigation
        await self.event("Page.loadEventFired")
        result = await self.call("Runtime.evaluate", expression=script, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        if screenshot is not None:
            metrics = await self.call("Page.getLayoutMetrics")
            height = min(int(metrics["cssContentSize"]["height"]), 6000)
            shot = await self.call(
                "Page.captureScreenshot", format="png", captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            )  # fmt: skip
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return result["result"].get("value")


# What every page test measures: does the page scroll sideways, and is any element cut off
# at the right edge (its box ends beyond the viewport) or squeezed to nothing?
LAYOUT = """
(() => {
  const width = window.innerWidth;
  const cut = [];
  for (const el of document.querySelectorAll('%s')) {
    const box = el.getBoundingClientRect();
    if (box.width <= 0 || box.height <= 0 || box.right > width + 1 || box.left < -1) {
      const text = (el.textContent || '').trim().slice(0, 40);
      cut.push(el.tagName + ': ' + text + ' ' + JSON.stringify([box.left, box.right, box.width]));
    }
  }
  return {width, scrollWidth: document.documentElement.scrollWidth, cut};
})()
"""


def layout(selector: str) -> str:
    return LAYOUT % selector
