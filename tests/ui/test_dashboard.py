"""The dashboard at /ui in a real browser (Debian's Chromium through Playwright) against a real
Conduit server: login as the admin and as tenants, overview charts, the request explorer and a
request's trace, the playground with retrieval and citations, collections, keys and usage.
Every page visited is saved as a screenshot under test-artifacts/ui/."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from openai import OpenAI

from tests.conftest import ServerProcess
from tests.ui.conftest import Screens, login

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Route

Traffic = dict[str, tuple[str, str]]  # who -> (request id, answer)

# Prompts are attacker-controlled: the dashboard must show this as text, never as markup.
MARKUP = """<img src="x" onerror="document.title='pwned'"><b>bold</b>"""
RAILS = b"Standard gauge track is 1435 millimetres between the rails. Broad gauge is wider than that."


def expect(target: Page | Locator) -> Any:
    """Playwright's assertions, imported once the browser fixture found the package."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def _chat(client: OpenAI, model: str, question: str, **extra) -> tuple[str, str]:
    """(request id, answer) of one small non-streamed chat completion."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0, **extra)
    completion = raw.parse()
    rid = raw.headers.get("x-request-id") or completion.id.replace("chatcmpl-", "req-", 1)
    return rid, completion.choices[0].message.content or ""


@pytest.fixture(scope="module")
def traffic(dashboard: ServerProcess, tenant_keys: dict[str, str]) -> Traffic:
    """Requests of the admin and two tenants, on the bundled model and the citing upstream."""
    admin = dashboard.client(timeout=120)
    acme = dashboard.client(tenant_keys["acme"], timeout=120)
    globex = dashboard.client(tenant_keys["globex"], timeout=120)
    made = {
        "admin": _chat(admin, "smollm2", "Name a colour."),
        "acme": _chat(acme, "smollm2", f"Say hello. {MARKUP}"),
        "acme_citer": _chat(acme, "citer", "Hello?"),
        "globex": _chat(globex, "citer", "What does globex do?"),
    }
    with admin.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Count to three."}],
                                       max_tokens=8, stream=True) as stream:
        for _ in stream:
            pass
    dashboard.wait_rows("endpoint LIKE '%chat%'", count=5, timeout=20)
    return made


@pytest.fixture(scope="module")
def store(dashboard: ServerProcess) -> str:
    client = dashboard.client(timeout=120)
    created = client.vector_stores.create(name="rails")
    done = client.vector_stores.files.upload_and_poll(vector_store_id=created.id, file=("rail.txt", io.BytesIO(RAILS)),
                                                      poll_interval_ms=100)
    assert done.status == "completed"
    return created.id


# -- the static files ----------------------------------------------------------------------------

def test_page_and_static_files_are_served_without_auth(dashboard: ServerProcess) -> None:
    for path in ("/ui", "/ui/"):
        page = httpx.get(dashboard.url + path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/ui/static/app.js" in page.text and page.headers["cache-control"] == "no-cache"
    types = {"app.js": "text/javascript", "charts.js": "text/javascript", "style.css": "text/css"}
    for name, kind in types.items():
        answer = httpx.get(f"{dashboard.url}/ui/static/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)
        assert answer.headers["cache-control"] == "no-cache"
    # Nothing but the folder's own files: no traversal, no dot-files, no unknown names.
    for bad in ("..%2Fapi%2Froutes%2Fui.py", "%2E%2E%2F__init__.py", "..%5C__init__.py", ".hidden.js",
                "missing.js", "app.js%00.css"):
        answer = httpx.get(f"{dashboard.url}/ui/static/{bad}")
        assert answer.status_code == 404, bad
    assert httpx.get(f"{dashboard.url}/ui/static/../../api/app.py").status_code == 404


# -- login -------------------------------------------------------------------------------------------

def test_a_wrong_key_stays_on_the_login_screen(page: Page, screens: Screens) -> None:
    page.goto("/ui")
    page.get_by_label("API key").fill("cdk-not-a-real-key")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("refused")
    expect(page.get_by_test_id("identity")).to_have_count(0)
    screens.take(page, "login")


# -- the admin's pages -------------------------------------------------------------------------------

def test_overview_charts_fill_with_traffic(page: Page, dashboard: ServerProcess, traffic: Traffic,
                                           screens: Screens) -> None:
    login(page, dashboard.admin_key)
    expect(page.get_by_test_id("identity")).to_have_text("admin")
    line = page.locator("[data-testid=chart-requests] path.series-line").first
    expect(line).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    expect(page.locator("[data-testid=chart-latency] path.series-line").first).to_be_attached()
    expect(page.get_by_test_id("tile-requests-value")).to_have_text(re.compile(r"^[1-9][\d,]*$"))
    page.get_by_label("Window").select_option("3600")
    expect(page.locator("[data-testid=chart-requests] path.series-line").first).to_be_attached()
    page.get_by_label("Refresh every 5 s").uncheck()  # so that no refresh redraws the chart under the mouse
    page.locator("[data-testid=chart-requests] rect.overlay").hover()
    expect(page.locator("[data-testid=chart-requests] .chart-tip")).to_contain_text("requests/s")
    screens.take(page, "overview")


def test_request_explorer_and_a_request_trace(page: Page, dashboard: ServerProcess, traffic: Traffic,
                                              screens: Screens) -> None:
    rid, answer = traffic["acme"]
    login(page, dashboard.admin_key, "#/requests")
    row = page.locator(f"[data-testid=request-row][data-id='{rid}']")
    expect(row).to_be_visible()
    for other, _ in traffic.values():
        expect(page.locator(f"[data-testid=request-row][data-id='{other}']")).to_be_visible()
    screens.take(page, "requests")

    page.get_by_label("Model").fill("citer")
    page.get_by_test_id("apply-filters").click()
    expect(page.get_by_test_id("request-row")).to_have_count(2)
    page.get_by_test_id("reset-filters").click()
    expect(row).to_be_visible()

    row.click()
    expect(page).to_have_url(re.compile(f"#/requests/{rid}$"))
    expect(page.get_by_test_id("request-id")).to_have_text(rid)
    expect(page.get_by_test_id("waterfall-bar").first).to_be_visible()
    stages = page.get_by_test_id("waterfall-bar").evaluate_all("bars => bars.map(b => b.dataset.stage)")
    assert "generate" in stages
    expect(page.get_by_test_id("request-answer")).to_have_text(answer)
    expect(page.get_by_test_id("request-prompt")).to_contain_text(f"Say hello. {MARKUP}")
    expect(page.locator("[data-testid=request-prompt] img, [data-testid=request-prompt] b")).to_have_count(0)
    assert page.title() != "pwned"

    page.get_by_test_id("feedback-up").click()
    page.get_by_label("Comment (optional)").fill("short and right")
    page.get_by_test_id("feedback-submit").click()
    expect(page.get_by_test_id("feedback-list")).to_contain_text("short and right")
    screens.take(page, "request_detail")


def test_playground_answers_with_citations(page: Page, dashboard: ServerProcess, store: str,
                                           screens: Screens) -> None:
    login(page, dashboard.admin_key, "#/playground")
    page.get_by_label("Model").select_option("citer")
    page.locator(f"[data-testid=playground-store][value='{store}']").check()
    page.get_by_label("Message").fill("How far apart are the rails of standard gauge track?")
    page.get_by_test_id("playground-send").click()
    answer = page.get_by_test_id("answer")
    expect(answer).to_contain_text("1435 millimetres")
    expect(page.get_by_test_id("citation-item")).to_have_count(1)
    page.get_by_test_id("citation-link").first.click()
    expect(page.get_by_test_id("citation-detail")).to_contain_text("Standard gauge track is 1435 millimetres")
    expect(page.locator("[data-testid=citation-item].active")).to_have_count(1)
    link = page.get_by_test_id("playground-request-id")
    expect(link).to_have_text(re.compile(r"^req-"))
    page.get_by_test_id("thumb-up").click()
    expect(page.get_by_test_id("playground-feedback-status")).to_contain_text("Thanks")
    screens.take(page, "playground")

    rid = link.inner_text()
    link.click()
    expect(page.get_by_test_id("request-id")).to_have_text(rid)
    expect(page.get_by_test_id("retrieved-chunk").first).to_contain_text("1435")
    screens.take(page, "playground_request")


def test_playground_shows_errors(page: Page, dashboard: ServerProcess) -> None:
    login(page, dashboard.admin_key, "#/playground")
    page.get_by_label("Model").select_option("smollm2")
    page.get_by_label("Temperature").fill("5")
    page.get_by_label("Message").fill("Hello")
    page.get_by_test_id("playground-send").click()
    expect(page.get_by_test_id("playground-error")).to_contain_text("temperature")
    # An upstream that drops the connection mid-answer: the stream ends with an error event.
    page.get_by_test_id("playground-clear").click()
    page.get_by_label("Model").select_option("flaky")
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Message").fill("Hello again")
    page.get_by_test_id("playground-send").click()
    expect(page.get_by_test_id("playground-error")).to_be_visible()
    expect(page.get_by_test_id("answer")).to_contain_text("Hello from")


def test_collections_files_and_search(page: Page, dashboard: ServerProcess, store: str,
                                      screens: Screens) -> None:
    login(page, dashboard.admin_key, "#/collections")
    row = page.locator(f"[data-testid=collection-row][data-id='{store}']")
    expect(row).to_contain_text("rails")
    screens.take(page, "collections")
    row.click()
    expect(page.get_by_test_id("collection-name")).to_have_text("rails")
    expect(page.get_by_test_id("files-table")).to_contain_text("rail.txt")
    page.get_by_label("Query").fill("standard gauge width")
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("search-result").first).to_contain_text("1435")
    screens.take(page, "collection")


def test_keys_create_and_revoke(page: Page, dashboard: ServerProcess, screens: Screens) -> None:
    login(page, dashboard.admin_key, "#/keys")
    page.get_by_label("Tenant").fill("initech")
    page.get_by_label("Name").fill("ui-made")
    page.get_by_label("Requests per minute").fill("30")
    page.get_by_test_id("key-create").click()
    secret = page.get_by_test_id("new-key-secret").input_value()
    assert secret
    keys = httpx.get(f"{dashboard.url}/admin/keys", headers=dashboard.headers()).json()["data"]
    [made] = [k for k in keys if k["name"] == "ui-made"]
    assert made["tenant"] == "initech" and made["limits"]["rpm"] == 30
    row = page.locator(f"[data-testid=key-row][data-id='{made['id']}']")
    expect(row).to_contain_text("active")
    screens.take(page, "keys")
    row.get_by_test_id("key-revoke").click()
    row.get_by_test_id("key-revoke").click()  # the second click confirms
    expect(row).to_contain_text("revoked")
    assert httpx.get(f"{dashboard.url}/v1/models", headers=dashboard.headers(secret)).status_code == 401


def test_usage_and_tenants(page: Page, dashboard: ServerProcess, traffic: Traffic,
                           screens: Screens) -> None:
    login(page, dashboard.admin_key, "#/usage")
    expect(page.get_by_test_id("usage-table")).to_contain_text("acme")
    expect(page.get_by_test_id("usage-table")).to_contain_text("globex")
    tenants = page.get_by_test_id("tenants-table")
    expect(tenants).to_contain_text("acme")
    expect(tenants).to_contain_text("$5.00 / month")
    screens.take(page, "usage")


# -- a tenant's view ---------------------------------------------------------------------------------

def test_a_tenant_sees_only_its_own_requests(page: Page, dashboard: ServerProcess, tenant_keys: dict[str, str],
                                             traffic: Traffic, screens: Screens) -> None:
    login(page, tenant_keys["acme"], "#/requests")
    expect(page.get_by_test_id("identity")).to_have_text("tenant acme")
    expect(page.get_by_test_id("nav-keys")).to_have_count(0)
    expect(page.get_by_test_id("filter-tenant")).to_have_count(0)
    own, _ = traffic["acme"]
    other, _ = traffic["globex"]
    expect(page.locator(f"[data-testid=request-row][data-id='{own}']")).to_be_visible()
    expect(page.get_by_test_id("request-row")).to_have_count(2)
    expect(page.locator(f"[data-testid=request-row][data-id='{other}']")).to_have_count(0)
    screens.take(page, "tenant_requests")

    page.goto(f"/ui/#/requests/{other}")
    expect(page.get_by_test_id("request-not-found")).to_be_visible()
    screens.take(page, "tenant_request_not_found")
    page.goto("/ui/#/keys")
    expect(page.get_by_test_id("forbidden")).to_be_visible()

    page.goto("/ui/#/overview")
    expect(page.get_by_test_id("tile-requests-value")).to_have_text("2")
    expect(page.get_by_test_id("chart-kv")).to_have_count(0)
    screens.take(page, "tenant_overview")


def test_a_revoked_key_returns_to_login(page: Page, dashboard: ServerProcess) -> None:
    made = httpx.post(f"{dashboard.url}/admin/keys", headers=dashboard.headers(), json={"tenant": "acme"}).json()
    login(page, made["key"], "#/usage")
    httpx.delete(f"{dashboard.url}/admin/keys/{made['id']}", headers=dashboard.headers()).raise_for_status()
    page.get_by_test_id("nav-requests").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("refused")
    assert page.evaluate("sessionStorage.getItem('conduit.key')") is None



# -- a server without the observability endpoints ----------------------------------------------------

MISSING = re.compile(r"/admin/(whoami|stats|requests|tenants|feedback|drift)")


def _missing(route: Route) -> None:
    body = {"error": {"message": "Not found", "type": "invalid_request_error", "param": None, "code": None}}
    route.fulfill(status=404, json=body)


def test_pages_show_no_data_without_the_observability_endpoints(page: Page, dashboard: ServerProcess,
                                                                tenant_keys: dict[str, str], traffic: Traffic,
                                                                screens: Screens) -> None:
    page.route(MISSING, _missing)
    login(page, dashboard.admin_key)  # without /admin/whoami: the admin is the key that may list keys
    expect(page.get_by_test_id("identity")).to_have_text("admin")
    expect(page.get_by_test_id("tile-requests-value")).to_have_text("no data")
    expect(page.locator("[data-testid=chart-latency] [data-testid=chart-empty]")).to_be_visible()
    screens.take(page, "no_endpoints_overview")
    page.get_by_test_id("nav-requests").click()
    expect(page.get_by_test_id("requests-results").get_by_test_id("no-data")).to_be_visible()
    page.goto(f"/ui/#/requests/{'req-' + '0' * 24}")
    expect(page.get_by_test_id("request-not-found")).to_be_visible()
    page.get_by_test_id("nav-usage").click()
    expect(page.get_by_test_id("usage-table")).to_be_visible()  # /v1/usage is still there
    expect(page.get_by_test_id("no-data").first).to_be_visible()
    page.get_by_test_id("logout").click()
    login(page, tenant_keys["acme"])  # a tenant's key gets 403 from /admin/keys
    expect(page.get_by_test_id("identity")).to_have_text("tenant acme")
    expect(page.get_by_test_id("nav-keys")).to_have_count(0)
