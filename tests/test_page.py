"""The service's search page (issue 44) in a real headless browser: Debian's chromium driven by Playwright. A search,
a filtered search and an error as the service words it, with the API key typed into the page.

MEDCOLBERT_SCREENSHOTS=docs/screenshots makes the test write its screenshots there (the README shows them)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from medcolbert import ColBERT
from medcolbert.indexing.index import Index
from tests.conftest import make_tiny_model

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

DOCS = {
    "q1": ("What are the symptoms of type 2 diabetes? Increased thirst, frequent urination, hunger, fatigue and "
           "blurred vision are common symptoms of type 2 diabetes.", {"source": "medquad", "year": 2017,
                                                                      "title": "Type 2 diabetes"}),
    "q2": ("Statins can cause muscle pain (myalgia) and, rarely, myopathy; report unexplained muscle weakness.",
           {"source": "medlineplus", "year": 2021, "title": "Statins and muscles"}),
    "q3": ("Influenza vaccination is recommended every year for adults over 65 to prevent severe illness.",
           {"source": "medquad", "year": 2019, "title": "Flu vaccine"}),
    "q4": ("Metformin is the first medicine for type 2 diabetes; it lowers blood sugar and HbA1c.",
           {"source": "medlineplus", "year": 2020, "title": "Metformin"}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no chromium executable (apt-get install chromium); Playwright's own download is unreachable here")
    uvicorn = pytest.importorskip("uvicorn")
    from medcolbert.service import create_app

    root = tmp_path_factory.mktemp("page")
    model = ColBERT.from_pretrained(make_tiny_model(seed=9, doc_maxlen=64).save_pretrained(root / "m"), device="cpu")
    Index.build(root / "i", model, {d: {"text": t, "metadata": m} for d, (t, m) in DOCS.items()}, num_centroids=4,
                show_progress=False)
    app = create_app(root / "i", api_key="sesame", load_in_background=False)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _shot(page, name: str, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    folder = Path(os.environ.get("MEDCOLBERT_SCREENSHOTS") or tmp)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_search_filter_and_error_in_a_real_browser(server, tmp_path):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server + "/")
        # Without the key the page says what the service said, and offers the key field.
        page.wait_for_selector("#error:not([hidden])")
        assert "API key" in page.inner_text("#error")
        assert page.is_visible("#key")
        page.fill("#key", "sesame")
        page.fill("#query", "type 2 diabetes symptoms")
        page.click("#go")
        page.wait_for_selector("#results li.hit")
        hits = page.locator("#results li.hit")
        assert hits.count() == 4
        assert page.locator("#results mark").count() > 0   # matched words shaded
        assert "%" in page.inner_text("#results li.hit .why")
        assert page.is_hidden("#error")
        _shot(page, "search", tmp_path)
        # The index's fields are offered once the key is known (the page reloads /info after a search).
        page.wait_for_function("document.querySelectorAll('#fields option').length > 0")
        assert "source" in page.inner_text("#field-help")
        page.fill("#where", "source = medquad")
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('#results li.hit').length === 2")
        titles = page.locator("#results .hit-id").all_inner_texts()
        assert sorted(titles) == ["Flu vaccine (q3)", "Type 2 diabetes (q1)"]
        _shot(page, "filtered", tmp_path)
        page.fill("#where", "year >")
        page.click("#go")
        page.wait_for_selector("#error:not([hidden])")
        assert "filter" in page.inner_text("#error") and page.locator("#results li").count() == 0
        _shot(page, "error", tmp_path)
        # Nothing left the machine: every request went to the service itself (no CDN, no third party).
        assert requests and all(u.startswith(server) for u in requests)
        browser.close()


def test_the_page_files_are_served_without_the_key_and_nothing_else_is(server):
    import httpx

    assert httpx.get(server + "/").status_code == 200
    assert httpx.get(server + "/static/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(server + "/static/service.py", headers={"X-API-Key": "sesame"}).status_code == 404
    assert httpx.get(server + "/static/service.py").status_code == 401   # only the page's own files are open
    assert httpx.get(server + "/info").status_code == 401
    info = httpx.get(server + "/info", headers={"X-API-Key": "sesame"}).json()
    assert info["fields"]["year"] == ["integer"] and info["modes"] == ["plaid", "hybrid", "lexical"]
