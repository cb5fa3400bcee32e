"""The dashboard in a real browser: `streamlit run app.py` on 127.0.0.1, driven by Chromium.

Each deep-link test starts its own server, so the link is the first thing the server
ever sees (the classic `pages/` convention must render the page with the sidebar and
the URL's state even then). Screenshots go to artifacts/screenshots/.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from dashboard_fixture import METHODS, build

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "artifacts" / "screenshots"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
PAGES = {"": "Overview", "Query_explorer": "Query explorer", "Diffusion_lab": "Diffusion lab",
         "Curves": "Curves", "Manifolds": "Manifolds", "Toy_manifolds": "Toy manifolds",
         "Data_and_descriptors": "Data and descriptors"}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    data_dir, cache_dir, dataset = build(tmp_path_factory.mktemp("browser"))
    return {"CBIR_DATA_DIR": str(data_dir), "CBIR_CACHE_DIR": str(cache_dir)}, dataset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A fresh `streamlit run app.py` on a free port, stopped on exit."""

    def __init__(self, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
             f"--server.port={self.port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false"],
            cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> "Server":
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"streamlit did not start on {self.url}: {self.process.stderr.read().decode()[-2000:]}")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


def settled(page, timeout: float = 60_000) -> None:
    """Wait until the script has run and stopped."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)


def view_params(dataset, **extra) -> str:
    from cbir.cache import dataset_key
    return urlencode({"dataset": dataset_key(dataset), "protocol": "original", "query": dataset.queries[3].name,
                      "methods": [METHODS[1].slug(), f"{METHODS[1].slug()}+diffusion"], "alpha": "0.7", "k": "5",
                      **extra}, doseq=True)


def rendered(browser, server: Server, path: str, query: str, shot: str):
    """The page at `path?query`, settled, screenshot taken, with no exception and its title shown."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/{path}?{query}")
    settled(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("h1").first.inner_text().strip() == PAGES[path]
    return page


@pytest.mark.parametrize("path", list(PAGES))
def test_deep_link_on_a_fresh_server_renders_the_page_with_the_url_state(site, browser, path):
    env, dataset = site
    with Server(env) as server:
        page = rendered(browser, server, path, view_params(dataset), path or "Overview")
        sidebar = page.locator("[data-testid='stSidebar']")
        assert METHODS[1].label() in sidebar.inner_text()  # the URL's methods, not the default
        if path in ("Query_explorer", "Diffusion_lab", "Manifolds"):
            assert page.locator("input[aria-label='Query']").input_value() == dataset.queries[3].name
        if path == "Diffusion_lab":
            assert page.get_by_text("0.700").count() >= 1
        assert "query=" in page.url and "alpha=0.7" in page.url
        page.close()


@pytest.fixture(scope="module")
def server(site):
    with Server(site[0]) as running:
        yield running


def test_moving_the_alpha_slider_updates_the_map(site, browser, server):
    _, dataset = site
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/Diffusion_lab?{view_params(dataset, alpha='0.99', k='10')}")
    settled(page)
    shown = page.locator("[data-testid='stMetricValue']").first.inner_text()
    thumb = page.locator("input[type='range'][aria-label='alpha']")
    thumb.focus()
    thumb.press("Home")
    page.wait_for_function("() => new URL(location.href).searchParams.get('alpha') === '0.5'", timeout=30_000)
    settled(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "Diffusion_lab-alpha-moved.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[data-testid='stMetricValue']").first.inner_text() != shown
    page.close()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the uploader is shown only with torch")
def test_a_non_image_upload_shows_a_clear_message(site, browser, server):
    _, dataset = site
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/Query_explorer?{view_params(dataset)}")
    settled(page)
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(
        files=[{"name": "holiday.jpg", "mimeType": "image/jpeg", "buffer": b"this is not a JPEG"}])
    page.wait_for_selector("[data-testid='stAlertContentError']", timeout=30_000)
    settled(page)
    page.screenshot(path=str(SHOTS / "Query_explorer-bad-upload.png"), full_page=True)
    assert "holiday.jpg: not a readable image" in page.locator("[data-testid='stAlertContentError']").inner_text()
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """A user's clone: empty cache, no data, the committed demo."""
    root = tmp_path_factory.mktemp("clone")
    return {"CBIR_DATA_DIR": str(root / "data"), "CBIR_CACHE_DIR": str(root / "cache")}


@pytest.mark.parametrize("path", list(PAGES))
def test_a_fresh_clone_serves_the_demo_on_a_deep_link(fresh_clone, browser, path):
    from cbir.cache import list_datasets
    from cbir.demo import DEMO_DIR

    (dataset,) = list_datasets(DEMO_DIR).values()
    with Server({**fresh_clone, "CBIR_DEMO_DIR": str(DEMO_DIR)}) as server:
        page = rendered(browser, server, path, urlencode({"query": dataset.queries[5].name}),
                        f"demo-{path or 'Overview'}")
        assert page.locator("[data-testid='stAlertContentError']").count() == 0
        sidebar = page.locator("[data-testid='stSidebar']")
        text = sidebar.inner_text().replace("\n", " ")
        assert "Overview" in text and "Demo: 250 of the 6392 Paris6k images" in text
        if path in ("Query_explorer", "Manifolds"):
            assert page.locator("input[aria-label='Query']").input_value() == dataset.queries[5].name
        page.close()


def test_a_deep_link_to_a_stored_distractor_evaluation_on_a_fresh_server(tmp_path, browser):
    from dashboard_fixture import make_distractor_evaluation

    data_dir, cache_dir, dataset = build(tmp_path)
    make_distractor_evaluation(tmp_path, cache_dir, dataset)
    from cbir.topkstore import stored_evaluations

    (evaluation,) = stored_evaluations(cache_dir).values()
    query = urlencode({"dataset": evaluation.key, "query": dataset.queries[2].name})
    with Server({"CBIR_DATA_DIR": str(data_dir), "CBIR_CACHE_DIR": str(cache_dir), "CBIR_DEMO_DIR": ""}) as server:
        page = rendered(browser, server, "Query_explorer", query, "distractors-Query_explorer")
        assert page.locator("[data-testid='stAlertContentError']").count() == 0
        assert page.locator("input[aria-label='Dataset']").input_value() == evaluation.name
        assert page.get_by_text("R1M distractor").count() >= 1
        page.close()
