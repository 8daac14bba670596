"""The console in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium) against
a real `siteloc serve`: sign in, a site's map, versions and activation, a job to its end, keys, a wrong key.

Screenshots of each page go to $SITELOC_SCREENSHOT_DIR (default: a pytest temporary directory, printed).
Without Chromium the tests are skipped, except under CI=true, where a missing browser is a failure."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import LiveServer, TrainedSite, trained_wknn_site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 60

pytestmark = pytest.mark.skipif(
    os.environ.get("SITELOC_TEST_DATABASE_URL") is not None, reason="browser tests run in the embedded pass"
)


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    return ", ".join(missing) or None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("console-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def site(server: LiveServer) -> TrainedSite:
    return trained_wknn_site(server, versions=2)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("SITELOC_SCREENSHOT_DIR")
    path = Path(where) if where else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"CI=true but the browser tests cannot run: missing {missing} (apt-get install chromium "
                "chromium-driver)"
            )
        pytest.skip(f"headless Chromium not installed (missing {missing}); .ci/run installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1000"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield drv
    finally:
        drv.quit()


def _wait(driver: Any, condition: Any, message: str) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # Pages re-render from API answers, so an element found a moment ago may be gone: look again.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=ignored).until(condition, message)


def _css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.support import expected_conditions as ec

    return _wait(driver, ec.visibility_of_element_located(("css selector", selector)), f"{selector} never shown")


def _sign_in(driver: Any, server: LiveServer, key: str) -> None:
    driver.get(f"{server.url}/")  # `/` redirects to the console
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{server.url}/console/#/sites")
    field = _css(driver, "#key")
    field.clear()
    field.send_keys(key)
    driver.find_element("css selector", "#signin-submit").click()


def test_wrong_key_sees_an_error_not_a_blank_page(driver: Any, server: LiveServer, shots: Path) -> None:
    _sign_in(driver, server, "sl_not-a-key")
    error = _css(driver, "#signin .error")
    assert error.text.startswith("401") and "key" in error.text.lower()
    assert driver.find_element("css selector", "#key").is_displayed()  # still the sign-in form
    driver.save_screenshot(str(shots / "wrong-key.png"))


def test_an_app_key_is_told_its_role_is_not_enough(driver: Any, server: LiveServer) -> None:
    with server.client() as c:
        app_key = c.create_key("app", name="phone").key
    assert app_key
    _sign_in(driver, server, app_key)
    error = _css(driver, "#view .error")
    assert error.text.startswith("403") and "app" in error.text


def test_sites_and_a_site_map_with_its_points(driver: Any, server: LiveServer, site: TrainedSite, shots: Path) -> None:
    _sign_in(driver, server, server.key)
    row = _css(driver, f'#sites tr[data-site="{site.id}"]')
    assert "264" in row.text and "wknn v1" in row.text and "serving" in row.text
    assert "ready" in driver.find_element("css selector", "#health").text
    driver.save_screenshot(str(shots / "sites.png"))
    row.find_element("css selector", "a").click()
    _wait(driver, lambda d: int(d.find_element("id", "map").get_attribute("data-points") or 0) > 0, "no points drawn")
    info = driver.find_element("id", "map-info").text
    assert "survey points on floor" in info and "bounding box" in info
    # Points were drawn: the canvas is not blank.
    blank = driver.execute_script(
        "const c = document.getElementById('map'); const d = c.getContext('2d').getImageData(0, 0, c.width, "
        "c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 200) n++; return n;"
    )
    assert blank > 100
    driver.find_element("id", "density").click()
    driver.save_screenshot(str(shots / "site.png"))


def test_versions_compare_then_activate_shows_the_difference_first(
    driver: Any, server: LiveServer, site: TrainedSite, shots: Path
) -> None:
    _sign_in(driver, server, server.key)
    driver.get(f"{server.url}/console/#/sites/{site.id}/models")
    _css(driver, "#versions")
    _wait(driver, lambda d: len(d.find_elements("css selector", "svg.cdf polyline")) == 2, "two CDFs not drawn")
    assert "Training record" in driver.find_element("id", "version-detail").text
    candidate = site.versions[1]
    driver.find_element("css selector", f'button.activate[data-version="{candidate}"]').click()
    diff = _css(driver, "#activate-diff")
    assert "mean m" in diff.text and f"v{candidate}" in diff.text and "difference" in diff.text
    driver.save_screenshot(str(shots / "activate.png"))
    driver.find_element("id", "dialog-ok").click()
    _wait(
        driver,
        lambda d: "active" in d.find_element("css selector", f'#versions tr[data-version="{candidate}"]').text,
        "the table does not show the new active version",
    )
    with server.client() as c:
        status = {v.version: v.status for v in c.models(site.id)}
        assert status[candidate] == "active" and status[site.versions[0]] == "retired"
        assert c.site(site.id).active_model.version == candidate  # type: ignore[union-attr]
    driver.save_screenshot(str(shots / "versions.png"))


def test_a_job_started_from_the_console_is_watched_to_its_end(
    driver: Any, server: LiveServer, site: TrainedSite, shots: Path
) -> None:
    _sign_in(driver, server, server.key)
    driver.get(f"{server.url}/console/#/sites/{site.id}")
    _css(driver, "#finetune-submit").click()
    _wait(driver, lambda d: "#/jobs/" in d.current_url, "the console did not open the job")
    job_id = driver.current_url.rsplit("/", 1)[1]
    _wait(driver, lambda d: d.find_element("id", "job-state").text == "succeeded", "the job page never showed the end")
    assert driver.find_element("id", "job-log").text
    assert driver.find_element("id", "job-version").text.startswith("v")
    with server.client() as c:
        assert c.job(job_id).state == "succeeded"
    driver.save_screenshot(str(shots / "job.png"))


def test_a_failed_request_shows_the_servers_reason(driver: Any, server: LiveServer, site: TrainedSite) -> None:
    _sign_in(driver, server, server.key)
    driver.get(f"{server.url}/console/#/sites/{site.id}")
    select = _css(driver, "#finetune-model")
    _wait(driver, lambda d: len(select.find_elements("css selector", "option")) > 1, "model names not loaded")
    select.find_element("css selector", 'option[value="mtloc"]').click()  # the site has no sensor windows
    driver.find_element("id", "finetune-submit").click()
    error = _css(driver, "#finetune-result .error")
    assert error.text[:3] in ("409", "422") and "window" in error.text


def test_a_failed_job_shows_its_reason(driver: Any, server: LiveServer, site: TrainedSite, shots: Path) -> None:
    # Every bad request is refused before a job exists, so no request makes a job fail at run time; the failed job
    # is written the way the worker writes one (app.services.runner: fail_job with the error shown to users) into
    # the live server's own database.
    from app.db import Database
    from app.services.jobs import create_job, fail_job

    reason = "ValueError: holdout_fraction 1.5 leaves no survey point to train on"
    db = Database(f"sqlite:///{(server.data_dir / 'siteloc.db').resolve()}")
    try:
        with db.session() as s:
            job_id = create_job(s, kind="finetune", site_id=site.id, params={"model": "wknn"}).id
            fail_job(s, job_id=job_id, error=reason)
    finally:
        db.engine.dispose()
    with server.client() as c:
        assert c.job(job_id).state == "failed"
    _sign_in(driver, server, server.key)
    driver.get(f"{server.url}/console/#/jobs/{job_id}")
    assert _css(driver, "#job-state").text == "failed"
    assert "holdout_fraction" in _css(driver, "#job-error").text
    driver.get(f"{server.url}/console/#/jobs")
    row = _css(driver, f'#jobs tr[data-job="{job_id}"]')
    assert "failed" in row.text and "holdout_fraction" in row.text
    driver.save_screenshot(str(shots / "jobs.png"))


def test_keys_create_shown_once_list_and_revoke(
    driver: Any, server: LiveServer, site: TrainedSite, shots: Path
) -> None:
    _sign_in(driver, server, server.key)
    driver.get(f"{server.url}/console/#/keys")
    _css(driver, "#new-key-role").find_element("css selector", 'option[value="operator"]').click()
    driver.find_element("id", "new-key-sites").send_keys(site.id)
    driver.find_element("id", "new-key-name").send_keys("ops from the console")
    driver.find_element("css selector", "#new-key button").click()
    plaintext = _css(driver, "#new-key-value").text
    assert plaintext.startswith("sl_")
    driver.save_screenshot(str(shots / "keys.png"))
    with server.client(plaintext) as c:
        assert [s.id for s in c.sites()] == [site.id]  # the new key works, scoped to its site
    with server.client() as c:
        key_id = next(k.id for k in c.list_keys() if k.name == "ops from the console")
    driver.find_element("css selector", f'button.revoke[data-key="{key_id}"]').click()
    _css(driver, "#dialog-ok").click()
    _wait(driver, lambda d: not d.find_elements("css selector", f'button.revoke[data-key="{key_id}"]'), "not revoked")
    with server.client() as c:
        assert key_id not in {k.id for k in c.list_keys()}
