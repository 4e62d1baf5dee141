"""The web page in a real headless browser (Debian's chromium + chromium-driver, selenium):
type a query and see result images, open an explanation, add anchors from an uploaded table
and watch the job finish."""

import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no chromium + chromedriver (Debian: apt-get install chromium chromium-driver)")

KEY = "ui-admin-key"
QUERY = "green grass seen from above"


@pytest.fixture()
def server(encoders, tmp_path):
    from asif_index.sample_data import sample_pairs
    from connectors.index import Index
    from connectors.memory import MemoryStore
    from connectors.service import ServiceSettings, create_app

    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    arrays, captions, _ = sample_pairs()
    paths = []
    for i, a in enumerate(arrays):
        p = root / "img" / f"{i}.png"
        Image.fromarray(a).resize((160, 160)).save(p)
        paths.append(p)
    idx = Index.create(MemoryStore("ui"), *encoders, k=10)
    idx.add_anchors(paths[:24], captions[:24], [str(p) for p in paths[:24]])
    idx.add_items(paths[24:], "image", [{"path": str(p), "caption": captions[24 + i]}
                                        for i, p in enumerate(paths[24:])])
    (root / "more.tsv").write_text("image\tcaption\n" + "".join(
        f"{i}.png\t{captions[i]}\n" for i in range(24, 32)))
    app = create_app(idx, ServiceSettings(admin_keys=[KEY], image_roots=[root]),
                     jobs_dir=tmp_path / "jobs")
    from connectors.service.background import serving

    with serving(app) as base:
        yield base, root, idx


def chrome(offline: bool = False):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    if offline:  # every name but loopback fails to resolve: no CDN can answer
        opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


@pytest.fixture()
def browser():
    drv = chrome()
    yield drv
    drv.quit()


def test_api_docs_render_with_no_network(server):
    """/docs (Swagger UI) and /redoc load their scripts from the service itself."""
    from selenium.webdriver.common.by import By

    base, _, _ = server
    d = chrome(offline=True)
    try:
        d.get(base + "/docs")
        ops = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        paths = {o.text.replace("\u200b", "") for o in ops}
        assert {"/search", "/explain", "/jobs/ingest"} <= paths, paths
        urls = d.execute_script("return performance.getEntriesByType('resource')"
                                ".map(e => e.name)")
        assert urls and all(u.startswith(base) for u in urls), urls
        d.get(base + "/redoc")
        wait(d, lambda d: "/search" in d.find_element(By.TAG_NAME, "body").text)
    finally:
        d.quit()


def wait(drv, cond, timeout=60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # a re-render between finding an element and reading it is another poll, not a failure
    return WebDriverWait(drv, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: cond(d))


def test_search_explain_and_anchor_job_in_a_browser(server, browser):
    from selenium.webdriver.common.by import By

    base, root, idx = server
    d = browser
    d.get(base + "/")
    d.find_element(By.ID, "key").send_keys(KEY)
    d.find_element(By.ID, "save-key").click()
    wait(d, lambda d: "key accepted" in d.find_element(By.ID, "status").text)
    q = d.find_element(By.ID, "query")
    q.send_keys(QUERY)
    d.find_element(By.ID, "search-btn").click()
    results = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result"))
    assert len(results) == 18  # every stored item (42 - 24 anchors), up to the limit of 24
    # thumbnails arrive as images the browser decoded
    wait(d, lambda d: all(d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        for img in d.find_elements(By.CSS_SELECTOR, "#results .result img")))
    want = [h.id for h in idx.search(text=QUERY, limit=3)]
    assert [r.get_attribute("data-id") for r in results[:3]] == want
    results[0].click()
    rows = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#explain .anchor"))
    assert 0 < len(rows) <= 10
    assert "Why it matches" in d.find_element(By.ID, "explain").text
    # one score: the card's number is the explanation's, and it lies in [0, 1]
    card = results[0].find_element(By.CSS_SELECTOR, ".score").text.split("·")[-1].strip()
    shown = d.find_element(By.ID, "explain-score").text.rsplit(" ", 1)[-1]
    assert card == shown and 0.0 <= float(card) <= 1.0, (card, shown)
    if os.environ.get("ASIF_UI_SCREENSHOT"):
        time.sleep(0.5)
        d.save_screenshot(os.environ["ASIF_UI_SCREENSHOT"])
    # anchors: upload a table, start the job, watch it finish
    d.find_element(By.ID, "tab-anchors").click()
    wait(d, lambda d: d.find_element(By.ID, "anchor-count").text == "24")
    d.find_element(By.ID, "table-file").send_keys(str(root / "more.tsv"))
    d.find_element(By.ID, "images-dir").send_keys("img")
    d.find_element(By.ID, "add-anchors").click()
    wait(d, lambda d: d.find_element(By.ID, "job-state").get_attribute("data-state") == "done",
         timeout=120)
    assert "8 / 8" in d.find_element(By.ID, "job-state").text
    wait(d, lambda d: d.find_element(By.ID, "anchor-count").text == "32")
    assert len(idx.anchors) == 32


def test_daily_use_paging_more_like_this_photo_queries_and_removal(server, browser, tmp_path):
    """The page as a photo library is used: no key yet, paging, more like this, a dropped
    photo as the query (previewed, explained), photos added by upload, anchors found and
    removed, the key forgotten."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, root, idx = server
    d = browser
    d.get(base + "/")
    assert d.find_element(By.ID, "need-key").is_displayed()  # the "enter a key" state
    assert not d.find_element(By.ID, "search-btn").is_enabled()
    d.find_element(By.ID, "key").send_keys(KEY)
    d.find_element(By.ID, "save-key").click()
    wait(d, lambda d: "key accepted" in d.find_element(By.ID, "status").text)
    assert not d.find_element(By.ID, "need-key").is_displayed()
    Select(d.find_element(By.ID, "limit")).select_by_visible_text("12")
    d.find_element(By.ID, "query").send_keys(QUERY)
    d.find_element(By.ID, "search-btn").click()

    def ids(d):  # in one script call: a re-render between calls would leave stale elements
        return d.execute_script("return [...document.querySelectorAll('#results .result')]"
                                ".map((e) => e.dataset.id)")

    first = wait(d, lambda d: ids(d) if len(ids(d)) == 12 else None)
    cards = d.find_elements(By.CSS_SELECTOR, "#results .result")
    assert cards[0].find_element(By.CSS_SELECTOR, ".file").text.endswith(".png")  # a file name
    d.find_element(By.ID, "next").click()
    second = wait(d, lambda d: ids(d) if ids(d) and ids(d) != first else None)
    assert len(second) == 6 and not set(first) & set(second)  # 18 items: 12 + 6, no repeat
    assert [h.id for h in idx.search(text=QUERY, limit=18)] == first + second
    assert "results 13-18" in d.find_element(By.ID, "status").text
    assert not d.find_element(By.ID, "next").is_enabled()
    d.find_element(By.ID, "prev").click()
    wait(d, lambda d: ids(d) == first)
    # more like this: the item itself comes first, then its neighbours, as the API has them
    d.find_elements(By.CSS_SELECTOR, "#results .result .more")[2].click()
    like = wait(d, lambda d: ids(d) if ids(d) and ids(d)[0] == first[2] else None)
    assert like == [h.id for h in idx.similar(first[2], limit=12).hits]
    # a photo as the query: previewed, the text box cleared, the match explained
    photo = root / "img" / "30.png"
    f = d.find_element(By.ID, "file")
    d.execute_script("arguments[0].hidden = false", f)
    d.find_element(By.ID, "query").send_keys(" ")
    f.send_keys(str(photo))
    wait(d, lambda d: "photo 30.png" in d.find_element(By.ID, "status").text)
    assert d.find_element(By.ID, "query").get_attribute("value") == ""
    assert d.find_element(By.ID, "query-preview").is_displayed()
    top = d.find_elements(By.CSS_SELECTOR, "#results .result")[0]
    top.click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#explain .anchor"))
    card = top.find_element(By.CSS_SELECTOR, ".score").text.split("·")[-1].strip()
    assert d.find_element(By.ID, "explain-score").text.rsplit(" ", 1)[-1] == card
    if os.environ.get("ASIF_UI_SCREENSHOT"):
        time.sleep(0.5)
        d.save_screenshot(os.environ["ASIF_UI_SCREENSHOT"].replace(".png", "-photo.png"))
    # admin: photos added by upload, then an anchor found and removed
    d.find_element(By.ID, "tab-anchors").click()
    new = []
    for i in (40, 41):
        p = tmp_path / f"new{i}.png"
        Image.open(root / "img" / f"{i}.png").rotate(90).save(p)
        new.append(str(p))
    n0 = idx.store.count_items(version=idx.version)
    d.find_element(By.ID, "ingest-source").send_keys("browser")
    d.find_element(By.ID, "ingest-files").send_keys("\n".join(new))
    wait(d, lambda d: d.find_element(By.ID, "job-state").get_attribute("data-state") == "done",
         timeout=120)
    idx.refresh()
    assert idx.store.count_items({"source": "browser"}, idx.version) == 2
    assert idx.store.count_items(version=idx.version) == n0 + 2
    caption = idx.anchors.payloads[3].caption
    d.find_element(By.ID, "anchor-grep").send_keys(caption)
    d.find_element(By.ID, "anchor-find").click()
    rows = wait(d, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, ".anchor-row")
                              if caption in r.text] or None)
    target = int(rows[0].get_attribute("data-id"))
    rows[0].find_element(By.TAG_NAME, "input").click()
    if os.environ.get("ASIF_UI_SCREENSHOT"):
        d.save_screenshot(os.environ["ASIF_UI_SCREENSHOT"].replace(".png", "-anchors.png"))
    d.find_element(By.ID, "remove-anchors").click()
    wait(d, lambda d: d.find_element(By.ID, "job-state").get_attribute("data-state") == "done"
         and "remove" in d.find_element(By.ID, "job-state").text, timeout=120)
    wait(d, lambda d: d.find_element(By.ID, "anchor-count").text == "23")
    idx.refresh()
    assert target not in idx.anchors.ids.tolist() and len(idx.anchors) == 23
    d.find_element(By.ID, "forget-key").click()
    assert d.execute_script("return sessionStorage.getItem('asif-key')") is None
    assert d.find_element(By.ID, "need-key").is_displayed()
