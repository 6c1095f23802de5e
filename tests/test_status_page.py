"""The status page in a real headless browser (Debian's Chromium): after its scripts ran,
the DOM shows the live numbers the test just posted; with a token it shows no data until
the token is in its URL fragment. Skipped when /usr/bin/chromium is absent."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import Served, class_image, post_samples, tiny_config, wait_trained

from edgecl.learner import Learner

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "page-token"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason="no Chromium (apt-get install chromium) for the page test")


def chromium(url: str, profile: Path, *args: str) -> str:
    """Chromium headless on ``url``: waits (virtual time) for the page's fetches, then
    returns stdout (``--dump-dom``: the DOM after the scripts ran)."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", *args, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def by_id(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"no element #{element_id} in the DOM"
    return match.group(1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("page")


@pytest.fixture(scope="module")
def served(folder: Path, one_thread: None) -> Iterator[Served]:
    learner = Learner(folder / "state", tiny_config(folder))
    try:
        with Served(learner) as srv:
            yield srv
    finally:
        learner.close()


def test_page_shows_the_live_numbers(served: Served, folder: Path) -> None:
    labels = ["cat"] * 5 + ["dog"] * 4 + ["owl"] * 4
    images = [class_image(i % 3, i) for i in range(len(labels))]
    assert post_samples(served.url, images, labels).status_code == 200
    status = wait_trained(served.url)
    dom = chromium(served.url + "/", folder / "profile-dom", "--dump-dom")
    assert 'data-state="live"' in dom
    assert by_id(dom, "samples") == "13"
    assert by_id(dom, "classes") == "3"
    assert by_id(dom, "model-version") == str(status["model_version"])
    assert by_id(dom, "train-steps") == str(status["train_steps"])
    assert "13 samples · 3 classes" in by_id(dom, "summary")
    assert "MiB resident" in by_id(dom, "memory")
    for name in ("cat", "dog", "owl"):
        assert f"<span>{name}</span>" in dom  # the class list
    # the charts were drawn: a line in the samples and the memory charts
    for chart in ("samples-chart", "classes-chart", "memory-chart"):
        svg = re.search(rf'<svg[^>]*id="{chart}".*?</svg>', dom, re.S)
        assert svg and "<path" in svg.group(0), chart
    assert "no evaluation yet" in dom  # no evaluation set configured


def test_screenshot_is_rendered(served: Served, folder: Path) -> None:
    shot = folder / "status-page.png"
    chromium(served.url + "/", folder / "profile-shot", f"--screenshot={shot}",
             "--window-size=1280,1100", "--hide-scrollbars")
    assert shot.is_file() and shot.stat().st_size > 20_000  # a drawn page, not a blank one


def test_page_with_a_token(folder: Path, one_thread: None) -> None:
    learner = Learner(folder / "guarded", tiny_config(folder), start=False)
    try:
        with Served(learner, token=TOKEN) as srv:
            assert post_samples(srv.url, [class_image(0, 0)], ["hidden-class"],
                                token=TOKEN).status_code == 200
            dom = chromium(srv.url + "/", folder / "profile-auth", "--dump-dom")
            assert 'data-state="auth"' in dom and "hidden-class" not in dom
            assert by_id(dom, "samples") == "–"
            dom = chromium(f"{srv.url}/#token={TOKEN}", folder / "profile-token", "--dump-dom")
            assert 'data-state="live"' in dom
            assert by_id(dom, "samples") == "1" and "<span>hidden-class</span>" in dom
    finally:
        learner.close()
