"""The built book, as readers see it, in headless Chromium: every page of ``_build/html``.

Run by ``make test-site`` after ``make test-book`` (``make test`` does both); ``tools/install_browser.sh`` puts
Debian's chromium and chromedriver on a fresh machine first. Each page is served over HTTP from the build folder
and loaded once; what the checks read is collected in one pass per page. Screenshots of the intro page and a
chapter (light and dark) are written to ``_build/screenshots/``.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
WIDGETS = "VBox|HBox|IntSlider|FloatSlider|SelectionSlider|Dropdown"  # a widget's repr reads e.g. "VBox(children=..."

COLLECT = """
const done = arguments[arguments.length - 1];
const settle = async () => {
  window.scrollTo(0, document.body.scrollHeight);  // images below the fold load too
  await Promise.all([...document.images].map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  window.scrollTo(0, 0);
  const text = document.body.innerText;
  const maths = [...document.querySelectorAll('.math')];
  const outputs = [...document.querySelectorAll('.cell_output')];
  return {
    title: document.title,
    h1: [...document.querySelectorAll('h1')].map(h => h.innerText).join(' | '),
    images: [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    tracebacks: document.querySelectorAll('.output.traceback, .output.error, .cell_output .traceback').length
      + outputs.filter(o => o.innerText.includes('Traceback (most recent call last)')).length,
    colab: [...document.querySelectorAll('a[href*="colab.research.google.com/github/"]')].map(a => a.href),
    nav: [...document.querySelectorAll('.bd-sidebar-primary a.reference')].map(a => a.href),
    citations: [...document.querySelectorAll('a[href*="references.html#"]')].map(a => a.href),
    problematic: document.querySelectorAll('.problematic, .xref.missing').length,
    rawRoles: (text.match(/\\{(cite|ref|numref|eq)[a-z:]*\\}`/g) || []).length,
    math: maths.length,
    mathTypeset: maths.filter(m => m.querySelector('mjx-container')).length,
    mathErrors: document.querySelectorAll('mjx-merror').length,
    codeCells: document.querySelectorAll('div.cell div.cell_input div.highlight').length,
    copyButtons: document.querySelectorAll('div.cell_input button.copybtn').length,
    hiddenInputs: document.querySelectorAll('div.cell.tag_hide-input').length,
    hiddenInputToggles: document.querySelectorAll('div.cell.tag_hide-input details, div.cell.tag_hide-input .toggle-details').length,
    widgetViews: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"], .jupyter-widgets').length,
    widgetRepr: (text.match(/\\b(WIDGETS)\\((children|value|options|layout)/g) || []).length,
    search: !!document.querySelector('.search-button, form.bd-search, input[name="q"]'),
    logo: [...document.querySelectorAll('.navbar-brand img, img.logo__image')].map(i => ({src: i.src, ok: i.naturalWidth > 0})),
    anchors: [...document.querySelectorAll('[id]')].map(e => e.id),
    searchResults: document.querySelectorAll('#search-results li, ul.search li').length,
    knobFigures: [...document.querySelectorAll('div.cell')]
      .filter(c => (c.querySelector('.cell_input') || {textContent: ''}).textContent.includes('widgets.knob('))
      .map(c => c.querySelectorAll('.cell_output img').length),
  };
};
settle().then(done, e => done({error: String(e)}));
""".replace("WIDGETS", WIDGETS)


def _browser_paths() -> tuple[str | None, str | None]:
    chrome = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    return chrome, shutil.which("chromedriver")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D102 - keep pytest's output readable
        pass


@pytest.fixture(scope="module")
def site():
    if not (HTML / "index.html").exists():  # `make test` builds it first (test-book); a bare `pytest` does not
        pytest.skip(f"no built book in {HTML}: run `make book` first, then `make test-site`")
    chrome, driver_path = _browser_paths()
    if chrome is None or driver_path is None:
        banner = "!" * 78
        msg = (f"\n{banner}\nSITE TEST SKIPPED: Chromium and chromedriver are not installed, and tools/install_browser.sh could not "
               f"install them here.\nOn Debian/Ubuntu: sudo apt-get install chromium chromium-driver\n{banner}")  # fmt: skip
        print(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(HTML)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--window-size=1280,900", "--hide-scrollbars",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_script_timeout(60)
    driver.set_page_load_timeout(60)
    origin = f"http://127.0.0.1:{server.server_port}"
    cache: dict[str, dict] = {}

    def visit(rel: str) -> dict:
        if rel not in cache:
            driver.get(f"{origin}/{rel}")
            facts = driver.execute_async_script(COLLECT)
            assert "error" not in facts, f"{rel}: collecting the page failed: {facts.get('error')}"
            facts["console"] = driver.get_log("browser")
            cache[rel] = facts
        return cache[rel]

    yield {"driver": driver, "origin": origin, "visit": visit}
    driver.quit()
    server.shutdown()


def _pages() -> list[str]:
    """Every page the build made (the TOC's pages, the search page and the index), as paths relative to the root."""
    if not HTML.exists():
        return ["index.html"]
    return sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.html") if not p.relative_to(HTML).parts[0].startswith("_"))


@pytest.mark.parametrize("page", _pages())
def test_page_loads_cleanly(site, page):
    facts = site["visit"](page)
    origin = site["origin"]
    own_errors = [e["message"] for e in facts["console"] if e["level"] == "SEVERE" and origin in e["message"]]
    assert not own_errors, f"{page}: console errors from the book's own assets: {own_errors}"
    # Every image the book serves must load. The browser resolves no other host (--host-resolver-rules), so a page
    # never waits on the network; the one external image, the Colab badge in each chapter, is left out.
    own_images = [i for i in facts["images"] if i["src"].startswith((origin, "data:"))]  # data: the animations' frames
    broken = [i["src"][:80] for i in own_images if not i["ok"]]
    assert own_images and not broken, f"{page}: images that did not load: {broken}"
    external = {urlsplit(i["src"]).hostname for i in facts["images"] if not i["src"].startswith((origin, "data:"))}
    assert external <= {"colab.research.google.com"}, f"{page}: images from other sites: {external}"
    assert facts["tracebacks"] == 0, f"{page}: {facts['tracebacks']} notebook outputs are error tracebacks"
    assert facts["problematic"] == 0 and facts["rawRoles"] == 0, f"{page}: unresolved references or raw roles on the page"
    assert facts["math"] == facts["mathTypeset"] and facts["mathErrors"] == 0, (
        f"{page}: {facts['math'] - facts['mathTypeset']} of {facts['math']} formulas not rendered, {facts['mathErrors']} MathJax errors"
    )
    assert facts["widgetViews"] == 0 and facts["widgetRepr"] == 0, f"{page}: a widget shows as an empty box or its repr"
    assert all(n > 0 for n in facts["knobFigures"]), f"{page}: a slider cell shows no static figure ({facts['knobFigures']})"
    assert facts["search"], f"{page}: no search box"
    assert facts["logo"] and all(i["ok"] for i in facts["logo"]), f"{page}: the logo is missing or did not load"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_has_what_readers_expect(site, chapter):
    facts = site["visit"](f"chapters/{chapter}.html")
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].removeprefix("https://github.com/")
    want = f"https://colab.research.google.com/github/{repo}/blob/main/chapters/{chapter}.ipynb"
    assert want in facts["colab"], f"{chapter}: no Colab launch link to {want} (found {facts['colab']})"
    assert all(c == want for c in facts["colab"]), f"{chapter}: a Colab link points elsewhere: {facts['colab']}"
    assert facts["codeCells"] > 0 and facts["copyButtons"] == facts["codeCells"], f"{chapter}: code cells without a copy button"
    assert facts["hiddenInputs"] > 0 and facts["hiddenInputToggles"] == facts["hiddenInputs"], (
        f"{chapter}: plotting code not behind toggles"
    )
    number = int(chapter[:2])
    assert re.search(rf"(^|\| ){number}\.\s", facts["h1"]), f"{chapter}: the heading {facts['h1']!r} carries no chapter number"


def test_contents_lists_every_chapter_and_citations_resolve(site):
    index = site["visit"]("index.html")
    listed = {urlsplit(h).path.rsplit("/", 1)[-1] for h in index["nav"]}
    missing = [c for c in CHAPTERS if f"{c}.html" not in listed]
    assert not missing, f"the table of contents lacks {missing}"
    assert "references.html" in listed, "the table of contents lacks the bibliography"
    anchors = set(site["visit"]("book/references.html")["anchors"])
    cited = {urlsplit(h).fragment for page in _pages() for h in site["visit"](page)["citations"]}
    assert cited, "no page cites anything"
    dangling = sorted(f for f in cited if f and f not in anchors)
    assert not dangling, f"citations whose bibliography entry is missing: {dangling}"


def test_math_is_rendered(site):
    facts = site["visit"]("chapters/06_diffusion.html")  # the chapter with the most equations
    assert facts["math"] > 20 and facts["mathTypeset"] == facts["math"], f"{facts['mathTypeset']} of {facts['math']} formulas rendered"


def test_sliders_show_static_figures(site):
    knobs = [n for c in CHAPTERS for n in site["visit"](f"chapters/{c}.html")["knobFigures"]]
    assert len(knobs) >= 9 and all(n > 0 for n in knobs), f"sliders and the images their static panels show: {knobs}"


WAIT_FOR_RESULTS = """
  await new Promise(r => {
    const t0 = Date.now();
    const poll = () => (document.querySelectorAll('#search-results li, ul.search li').length || Date.now() - t0 > 20000)
      ? r() : setTimeout(poll, 200);
    poll();
  });"""


def test_search_finds_a_chapter(site):
    site["driver"].get(f"{site['origin']}/search.html?q=diffusion")
    facts = site["driver"].execute_async_script(COLLECT.replace("window.scrollTo(0, document.body.scrollHeight);", WAIT_FOR_RESULTS))
    assert facts["searchResults"] > 0, "searching for 'diffusion' found nothing"


def test_screenshots_and_dark_mode(site):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver, origin = site["driver"], site["origin"]
    for name, rel in (("intro", "index.html"), ("chapter-06", "chapters/06_diffusion.html")):
        driver.get(f"{origin}/{rel}")
        driver.execute_async_script(COLLECT)
        driver.save_screenshot(str(SHOTS / f"{name}.png"))
    # dark mode: figures sit on a light card, so black axes and labels stay readable on the dark page
    driver.execute_script("document.documentElement.dataset.theme = 'dark'; document.documentElement.dataset.mode = 'dark';")
    figure = driver.execute_script(
        "const img = document.querySelector('.cell_output img');"
        "img.scrollIntoView({block: 'center'});"
        "return {bg: getComputedStyle(img).backgroundColor, page: getComputedStyle(document.body).backgroundColor};"
    )
    driver.save_screenshot(str(SHOTS / "chapter-06-dark.png"))

    def lightness(css: str) -> float:
        r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
        return (r + g + b) / 765

    assert lightness(figure["page"]) < 0.3, f"dark mode did not darken the page ({figure['page']})"
    assert lightness(figure["bg"]) > 0.8 and "0)" not in figure["bg"].replace(" ", "")[-3:], (
        f"in dark mode figures have no light background ({figure['bg']})"
    )
    for name in ("intro", "chapter-06", "chapter-06-dark"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
