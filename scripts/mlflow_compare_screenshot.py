"""The screenshot of docs/tracking.md: MLflow's comparison view of a review's runs, taken in headless Chromium.

    PYTHONPATH=. python scripts/mlflow_compare_screenshot.py WORK --png docs/mlflow-compare-DATE.png

Needs the full MLflow (`pip install 'segbench[mlflow-server]'`; aiohttp, which it brings, drives the browser)
and Chromium. Steps: synthetic PNG data in WORK (the tests' `write_synthetic_data`); `mlflow server` on a free
local port (its store in WORK); a tiny review (`segbench run --archs unet,segformer --iterations 30 --tracker
mlflow --tracking-uri` that server); the UI's compare view of the review's child runs
(`#/compare-runs?runs=[...]&experiments=[...]`) opened in Chromium over the DevTools protocol, the
parallel-coordinates plot set to architecture, optimiser and learning rate against best/dice_fg_per_case, the
parameters that differ, the metrics; the page down to the end of the metrics table saved as PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from tests.bench.test_run import write_synthetic_data

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1200, 1900  # the page is laid out for this window; the PNG is cut below the metrics table
PLOT = [(0, "model.arch"), (0, "train.optimizer"), (0, "train.lr"), (1, "best/dice_fg_per_case")]  # (0 params, 1 metrics)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(done, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.3)


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free local port (its own process group), once /health answers."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")]
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited: see {folder / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                return answer.status == 200
        except OSError:
            return False

    _until(healthy, "mlflow server")
    return server, uri


def run_review(data: Path, out: Path, uri: str) -> None:
    command = [sys.executable, "-m", "segbench", "run", str(data), "--archs", "unet,segformer", "--iterations", "30",
               "--set", "data.resize=[32,32]", "--no-progress", "--no-speed", "--out", str(out), "--tracker", "mlflow",
               "--tracking-uri", uri]
    subprocess.run(command, check=True, env={**os.environ, "SEGBENCH_HOME": str(out.parent / "home")})


def compare_url(uri: str) -> str:
    """The UI's compare view of the children of the review's parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("segbench").experiment_id
    children = [r.info.run_id for r in client.search_runs([experiment]) if r.data.tags.get("mlflow.parentRunId")]
    quoted = [urllib.parse.quote(json.dumps(v, separators=(",", ":"))) for v in (children, [experiment])]
    return f"{uri}/#/compare-runs?runs={quoted[0]}&experiments={quoted[1]}"


class Page:
    """One headless Chromium tab over the DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, profile: Path):
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)
        self.browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        _until(lambda: port_file.is_file() and len(port_file.read_text().split()) == 2, "chromium", 60)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        self.ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.calls = 0

    async def __aenter__(self) -> Page:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.ws_url, max_msg_size=0)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        await self.session.close()
        os.killpg(self.browser.pid, signal.SIGTERM)
        self.browser.wait(timeout=30)

    async def call(self, method: str, **params) -> dict:
        self.calls += 1
        await self.ws.send_json({"id": self.calls, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(str(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    async def click(self, selector: str, condition: str) -> int:
        """Click every ``selector`` element for which the JS ``condition`` on ``e`` holds; how many."""
        return await self.js(f"(() => {{ const hits = [...document.querySelectorAll('{selector}')].filter(e => {condition});"
                             " hits.forEach(e => e.click()); return hits.length; })()")

    async def choose(self, which: int, text: str) -> None:
        """Type ``text`` into the plot's ``which``-th select box and take the option with Enter."""
        await self.js(f"(() => {{ const box = document.querySelectorAll('input[role=combobox]')[{which}];"
                      " box.focus(); box.click(); })()")
        await asyncio.sleep(0.5)
        await self.call("Input.insertText", text=text)
        await asyncio.sleep(1)
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
        await asyncio.sleep(1)


async def screenshot(url: str, profile: Path) -> Image.Image:
    async with Page(profile) as page:
        await page.call("Page.enable")
        await page.call("Page.navigate", url=url)
        deadline = time.monotonic() + 120
        while not await page.js("document.body.innerText.includes('Comparing') && document.body.innerText.includes('best/')"):
            if time.monotonic() > deadline:
                raise RuntimeError("the compare view did not load")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        await page.click("button", "e.getAttribute('data-component-id') === 'mlflow.assistant.chat_panel.close'")
        await page.click("button", "e.getAttribute('aria-label') === 'Toggle sidebar'")
        await page.click("button", "e.innerText.trim() === 'Clear All'")
        for which, text in PLOT:
            await page.choose(which, text)
        await page.js("document.activeElement.blur()")
        await page.click("button", "e.getAttribute('aria-label') === 'Parameters - Show diff only'")
        await page.click("div[role=button]", "e.innerText.trim() === 'Run details'")  # folded: the parameters name the runs
        await asyncio.sleep(2)
        bottom = await page.js("[...document.querySelectorAll('div[role=button]')]"
                               ".filter(e => e.innerText.trim() === 'Artifacts')[0].getBoundingClientRect().top")
        shot = await page.call("Page.captureScreenshot", format="png")
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
    return image.crop((0, 0, image.width, int(bottom) - 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a new folder for the data, the server's store and the review")
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    work = args.work.resolve()
    server, uri = start_server(work / "server")
    try:
        run_review(write_synthetic_data(work / "data"), work / "review", uri)
        url = compare_url(uri)
        print(url)
        image = asyncio.run(screenshot(url, work / "chromium-profile"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    image.save(args.png, optimize=True)
    print(f"{args.png}: {image.width} x {image.height}, {args.png.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
