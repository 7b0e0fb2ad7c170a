"""The calculator page in a real browser: Debian's chromium, driven by Playwright for Python
(``executable_path``: no browser download), against ``kvsim serve`` started on an ephemeral port.

Skipped, with the reason, when playwright or chromium is missing - unless
KVSIM_BROWSER_TESTS=required (CI), where that is a failure. Set KVSIM_CHROMIUM to use another
chromium binary, KVSIM_SCREENSHOT=path.png to keep a screenshot of the page.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("KVSIM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REQUIRED = os.environ.get("KVSIM_BROWSER_TESTS") == "required"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download is needed)"
    if not (Path(CHROMIUM).exists() and os.access(CHROMIUM, os.X_OK)):
        return f"chromium is not installed at {CHROMIUM} (apt-get install chromium, or run .ci/install-browser)"
    return None


MISSING = _missing()
if MISSING:
    if REQUIRED:
        pytest.fail(f"browser tests are required here (KVSIM_BROWSER_TESTS=required) but {MISSING}",
                    pytrace=False)
    pytest.skip(f"browser tests skipped: {MISSING}", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

TIMEOUT_MS = 30_000


def _serve_command() -> list[str]:
    """``kvsim serve`` once wired into the CLI; the same handler through ``python -m kvsim.serve``
    until then."""
    from kvsim.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    if "serve" in sub.choices:  # what the kvsim console script runs
        run_cli = "import sys; from kvsim.cli.main import main; sys.exit(main())"
        return [sys.executable, "-c", run_cli, "serve", "--port", "0"]
    return [sys.executable, "-m", "kvsim.serve", "--port", "0"]


@pytest.fixture(scope="module")
def base_url():
    proc = subprocess.Popen(_serve_command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if not match:
            proc.kill()
            raise RuntimeError(f"kvsim serve did not start: {line!r} {proc.stderr.read()!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser_context():
    profile = tempfile.mkdtemp(prefix="kvsim-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(browser_context, base_url):
    page = browser_context.new_page()
    page.problems = []
    page.requests = []
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    # 400s are the field errors the tests provoke; anything else on the console is a problem
    page.on("console", lambda m: m.type == "error" and "status of 400" not in m.text
            and page.problems.append(f"console: {m.text}"))
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(base_url)
    ready(page)
    yield page
    page.close()


def ready(page):
    """Wait until the results, the sensitivity and the advice of the latest inputs are shown."""
    page.locator("body[data-state=ready]").wait_for(state="attached")
    page.locator("body[data-extras]").wait_for(state="attached")
    expect(page.locator("body")).to_have_attribute("data-extras", page.locator("body").get_attribute("data-seq"))


def curve(page, name, panel="token"):
    return page.locator(f"#chart .panel-{panel} path.curve-{name}")


def test_load_shows_results_chart_sensitivity_and_advice(page, base_url):
    expect(page).to_have_title(re.compile("kvsim"))
    expect(page.locator("#bytes-per-token")).to_have_text("131,072 B")
    expect(page.locator("#capacity")).to_have_text("156,457 tokens")
    expect(page.locator("#token-hit")).to_have_text("49.3%")
    expect(page.locator("#lru-token")).to_have_text("49.3%")
    expect(page.locator("#fifo-token")).to_have_text("44.7%")
    for name in ("lru", "fifo"):
        assert int(curve(page, name).get_attribute("data-points")) >= 9
    assert int(curve(page, "seed", "request").get_attribute("data-points")) >= 9
    assert page.locator("#tornado rect.bar").count() >= 12
    assert page.locator("#sensitivity tbody tr").count() == 8
    expect(page.locator("#advice li[data-id=kv-dtype-fp8]")).to_contain_text("fp8 KV cache: token hit rate 49% -> 75%")
    expect(page.locator("#advice li[data-id=target]")).to_contain_text("memory for 80% token hit rate")
    # everything came from the local server
    assert page.requests and all(u.startswith(base_url) or u.startswith("data:") for u in page.requests), page.requests
    assert not page.problems, page.problems
    if os.environ.get("KVSIM_SCREENSHOT"):
        page.screenshot(path=os.environ["KVSIM_SCREENSHOT"], full_page=True)


def test_picking_a_preset_updates_the_numbers_and_the_chart(page):
    before = curve(page, "lru").get_attribute("d")
    page.select_option("#preset", "qwen3-32b")
    expect(page.locator("input[name=layers]")).to_have_value("64")
    page.select_option("#gpu", "h100-80gb")
    expect(page.locator("input[name=gpu-memory-gb]")).to_have_value("80")
    page.fill("input[name=gpus]", "2")
    expect(page.locator("#bytes-per-token")).to_have_text("262,144 B")
    expect(page.locator("#capacity")).to_have_text("337,491 tokens")
    expect(page.locator("#token-hit")).to_have_text("77.1%")
    ready(page)
    assert curve(page, "lru").get_attribute("d") != before
    expect(page.locator("#chart .panel-token text.label")).to_have_text("GPU memory per GPU (GiB), 2 GPUs")
    assert not page.problems, page.problems


def test_changing_an_input_updates_the_hit_rate_and_the_chart(page):
    before = curve(page, "lru").get_attribute("d")
    page.fill("input[name=arrival-rate]", "4")
    expect(page.locator("#token-hit")).not_to_have_text("49.3%")
    ready(page)
    rate = float(page.locator("#token-hit").inner_text().rstrip("%"))
    assert rate < 49.3
    assert curve(page, "lru").get_attribute("d") != before
    # a custom model: editing a preset field switches to "custom"
    page.fill("input[name=layers]", "16")
    expect(page.locator("#preset")).to_have_value("custom")
    expect(page.locator("#bytes-per-token")).to_have_text("65,536 B")
    assert not page.problems, page.problems


def test_a_bad_value_is_shown_next_to_its_field(page):
    page.fill("input[name=arrival-rate]", "-1")
    error = page.locator('.err[data-for="arrival-rate"]')
    expect(error).to_have_text("arrival-rate must be a number > 0 (got -1.0)")
    expect(page.locator("input[name=arrival-rate]")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#results")).to_have_class(re.compile("stale"))
    page.fill("input[name=turns]", "2.5")  # still the first error the server names
    page.fill("input[name=arrival-rate]", "1")
    expect(page.locator('.err[data-for="turns"]')).to_contain_text("turns must be a whole number")
    expect(error).to_be_empty()
    page.fill("input[name=turns]", "5")
    expect(page.locator('.err[data-for="turns"]')).to_be_empty()
    expect(page.locator("#token-hit")).to_have_text("49.3%")
    expect(page.locator("#results")).not_to_have_class(re.compile("stale"))
    # a memory too small for the weights is shown at the memory field
    page.select_option("#preset", "llama-3.1-70b")
    expect(page.locator('.err[data-for="gpu-memory-gb"]')).to_contain_text("does not hold the weights")
    assert not page.problems, page.problems


def test_the_simulation_adds_points_with_error_bars(page):
    page.fill("input[name=arrival-rate]", "0.2")  # a light scenario: a few seconds
    expect(page.locator("#token-hit")).not_to_have_text("49.3%")
    ready(page)
    page.click("#simulate")
    expect(page.locator("#simulate")).to_be_disabled()
    expect(page.locator("#sim-status")).to_contain_text("simulated", timeout=120_000)
    expect(page.locator("#simulate")).to_be_enabled()
    points = page.locator("#chart .panel-token g.sim-point")
    assert points.count() >= 8
    lru, fifo = (page.locator(f"#chart .panel-token g.sim-{p}").count() for p in ("lru", "fifo"))
    assert lru == fifo
    assert points.first.locator("line").count() == 3  # the bar and its two caps
    # other inputs: the points are for the old ones and are hidden
    page.fill("input[name=arrival-rate]", "0.3")
    ready(page)
    expect(page.locator("#chart g.sim-point")).to_have_count(0)
    assert not page.problems, page.problems


def test_a_fleet_behind_random_routing_changes_the_headline(page):
    expect(page.locator("input[name=instances]")).to_have_value("1")
    expect(page.locator("select[name=router]")).to_have_value("affinity")
    expect(page.locator("#token-hit")).to_have_text("49.3%")
    page.select_option("select[name=router]", "random")  # one instance: the router changes nothing
    ready(page)
    expect(page.locator("#token-hit")).to_have_text("49.3%")
    page.fill("input[name=instances]", "3")
    expect(page.locator("#policy-name")).to_have_text("LRU model, 3 instances, random")
    ready(page)
    rate = float(page.locator("#token-hit").inner_text().rstrip("%"))
    assert rate < 49.3  # random routing scatters the conversations over the instances
    expect(page.locator("#lru-token")).to_have_text(f"{rate:.1f}%")
    expect(page.locator("#methods tr[data-method=fifo] td.t")).to_have_text("no FIFO model for random routing")
    expect(page.locator("#chart .panel-token text.label")).to_have_text(
        "GPU memory per GPU (GiB), 1 GPU per instance, 3 instances")
    expect(curve(page, "fifo")).to_have_count(0)
    expect(curve(page, "seed", "request")).to_have_count(0)
    expect(page.locator("#advice li[data-id=routing]")).to_contain_text("session affinity")
    page.fill("input[name=instances]", "0")
    expect(page.locator('.err[data-for="instances"]')).to_contain_text("instances must be a whole number > 0")
    assert not page.problems, page.problems


def _incomplete(route, body):
    route.fulfill(status=200, content_type="application/json",
                  body=json.dumps({**body, "incomplete": True, "timing_ms": {"total": 1.0}}))


def test_an_incomplete_sensitivity_or_advice_is_asked_again(browser_context, base_url):
    """The server answers /api/sensitivity and /api/advice within a time budget, flagged
    ``incomplete`` when it ran out: the page asks again (the server goes on from its cache), and
    says so when it gives up."""
    page = browser_context.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    asked = {"sensitivity": 0, "advice": 0}

    def sensitivity(route):  # out of time twice, then the real answer
        asked["sensitivity"] += 1
        if asked["sensitivity"] <= 2:
            _incomplete(route, {"method": "lru", "rows": [], "base": None})
        else:
            route.continue_()

    def advice(route):  # never finished
        asked["advice"] += 1
        _incomplete(route, {"target": 0.8, "notes": [], "advice": []})

    page.route("**/api/sensitivity", sensitivity)
    page.route("**/api/advice", advice)
    try:
        page.goto(base_url)
        ready(page)
        assert asked["sensitivity"] == 3
        assert page.locator("#sensitivity tbody tr").count() == 8
        expect(page.locator("#sensitivity-status")).to_be_hidden()
        expect(page.locator("#timing")).to_contain_text("sensitivity")
        expect(page.locator("#timing")).to_contain_text("in 3 requests")
        expect(page.locator("#advice li")).to_have_count(0)
        status = page.locator("#advice-status")
        expect(status).to_be_visible()
        expect(status).to_contain_text(f"not finished after {asked['advice']} requests")
        expect(status).to_contain_text("kvsim calc --advise computes it")
        assert asked["advice"] == 60
        assert not problems, problems
    finally:
        page.close()


def test_a_cpu_offload_splits_the_headline_by_tier_and_stacks_the_chart(page):
    expect(page.locator("select[name=offload-mode]")).to_be_disabled()  # no CPU tier: nothing to apply to
    expect(page.locator("#tier-split")).to_be_hidden()
    expect(page.locator("#chart path.tier-area")).to_have_count(0)
    page.fill("input[name=cpu-offload-gib]", "64")
    expect(page.locator("#policy-name")).to_have_text("LRU model, GPU + CPU (inclusive)")
    ready(page)
    expect(page.locator("select[name=offload-mode]")).to_be_enabled()
    expect(page.locator("#token-hit")).to_have_text("82.4%")  # the tiered total
    expect(page.locator("#tier-split")).to_have_text("GPU 49.3% + CPU 33.1%")
    expect(page.locator("#prefill")).to_have_text(re.compile(r"prefill 10\.6 ms \(GPU alone 24\.6 ms, −57%\)"))
    expect(page.locator("#methods tr[data-method=lru] td.by-tier")).to_have_text("GPU 49.3% + CPU 33.1%")
    expect(page.locator("#methods tr[data-method=seed] td.by-tier")).to_have_text("GPU only")
    # the chart: the LRU total stacked as its GPU part and its CPU part, the axis says the CPU is fixed
    for tier in ("gpu", "cpu"):
        area = page.locator(f"#chart .panel-token path.tier-area.tier-{tier}")
        expect(area).to_have_count(1)
        assert int(area.get_attribute("data-points")) >= 9
    expect(page.locator("#chart .panel-request path.tier-area")).to_have_count(0)
    expect(page.locator("#chart .panel-token text.label")).to_have_text("GPU memory per GPU (GiB), 1 GPU, CPU 64 GiB fixed")
    expect(page.locator("#chart text.legend", has_text="CPU part")).to_have_count(1)
    expect(page.locator("#advice li[data-id=offload]")).to_contain_text("your 64 GiB of CPU offload (inclusive")
    expect(page.locator("#advice-notes")).to_contain_text("the other levers are priced on the GPU alone")
    # exclusive mode changes the split; a fleet with offload is refused at the field
    page.select_option("select[name=offload-mode]", "exclusive")
    expect(page.locator("#policy-name")).to_have_text("LRU model, GPU + CPU (exclusive)")
    expect(page.locator("#tier-split")).to_have_text("GPU 49.3% + CPU 33.5%")
    ready(page)
    page.fill("input[name=instances]", "2")
    expect(page.locator('.err[data-for="cpu-offload-gib"]')).to_contain_text("offload takes one instance here")
    page.fill("input[name=instances]", "1")
    expect(page.locator('.err[data-for="cpu-offload-gib"]')).to_be_empty()
    ready(page)
    # cleared: one tier again
    page.fill("input[name=cpu-offload-gib]", "0")
    expect(page.locator("#token-hit")).to_have_text("49.3%")
    expect(page.locator("#tier-split")).to_be_hidden()
    ready(page)
    expect(page.locator("#chart path.tier-area")).to_have_count(0)
    expect(page.locator("select[name=offload-mode]")).to_be_disabled()
    assert not page.problems, page.problems


# ----------------------------------------------------------------------------- under load


def _api(base_url, path, params):
    """The server's own answer, to compare the page's figures with."""
    import urllib.request

    req = urllib.request.Request(base_url.rstrip("/") + path, data=json.dumps(params).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _number(text: str) -> float:
    return float(re.search(r"[\d.,]+", text).group().replace(",", ""))


def _shorten(page, path, **window):
    """The page's simulation requests to ``path`` with a short window (the page's own takes a minute)."""
    def shorter(route):
        route.continue_(post_data=json.dumps({**json.loads(route.request.post_data), **window}))

    page.route(f"**{path}", shorter)


def test_the_headline_shows_what_the_cache_buys_under_load(page, base_url):
    """TTFT, TPOT, throughput and the sustainable rate beside the hit rate: the models' figures
    (the cards say so), with caching on and off; a lighter load shortens TTFT."""
    api = _api(base_url, "/api/serving", {"slo": "ttft-p99=0.5,tpot-p99=0.05"})
    on, off = api["caching"]["on"], api["caching"]["off"]
    expect(page.locator("#serving-cards h3").first).to_contain_text("model")
    assert _number(page.locator("#ttft").inner_text()) == pytest.approx(1000 * on["ttft_s"], abs=0.05)
    assert _number(page.locator("#ttft-off").inner_text()) == pytest.approx(1000 * off["ttft_s"], abs=0.5)
    assert _number(page.locator("#tpot").inner_text()) == pytest.approx(1000 * on["tpot_s"], abs=0.05)
    expect(page.locator("#throughput")).to_have_text("5 req/s")
    expect(page.locator("#tokens-per-s")).to_have_text(f"{on['input_tokens_per_s']:,.0f} in + "
                                                       f"{on['output_tokens_per_s']:,.0f} out tokens/s")
    expect(page.locator("#sustainable")).to_have_text(f"{on['saturation_arrival_rate']:.3g} conv/s")
    expect(page.locator("#hit-under-load")).to_contain_text(f"under load {100 * on['token_hit_rate']:.1f}% (model")
    expect(page.locator("#serving-note")).to_contain_text("Models (analytic/load.py)")
    before = page.locator("#ttft").inner_text()
    page.fill("input[name=arrival-rate]", "0.5")
    expect(page.locator("#ttft")).not_to_have_text(before)
    ready(page)
    assert _number(page.locator("#ttft").inner_text()) < _number(before)
    expect(page.locator("#throughput")).to_have_text("2.5 req/s")
    assert not page.problems, page.problems


def test_the_slo_answer_follows_the_targets(page, base_url):
    bound = _api(base_url, "/api/serving", {"slo": "ttft-p99=0.5,tpot-p99=0.05"})["slo"]["on"]["model_bound_arrival_rate"]
    answer = page.locator("#slo-models")
    expect(answer).to_contain_text(f"Within ttft-p99 ≤ 0.5 s, tpot-p99 ≤ 0.05 s, the models allow at most "
                                   f"{bound:.3g} conversations/s")
    expect(answer).to_contain_text("an upper bound")
    page.fill("input[name=slo-ttft-p99]", "0.1")
    expect(answer).to_contain_text("Within ttft-p99 ≤ 0.1 s")
    ready(page)
    tighter = float(re.search(r"at most ([\d.]+) conversations/s", answer.inner_text()).group(1))
    assert tighter < bound
    # no target: nothing to plan, and nothing to check
    page.fill("input[name=slo-ttft-p99]", "")
    page.fill("input[name=slo-tpot-p99]", "")
    expect(answer).to_contain_text("Give a latency target")
    ready(page)
    expect(page.locator("#simulate-plan")).to_be_disabled()
    assert not page.problems, page.problems


def test_a_bad_engine_field_or_target_is_shown_next_to_it(page):
    page.fill("input[name=slo-ttft-p99]", "-1")
    error = page.locator('.err[data-for="slo-ttft-p99"]')
    expect(error).to_have_text("slo: ttft-p99 must be a number of seconds in (0, 1e6] (got '-1')")
    expect(page.locator("input[name=slo-ttft-p99]")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#token-hit")).to_have_text("49.3%")  # the hit rates stand
    page.fill("input[name=slo-ttft-p99]", "0.01")
    expect(error).to_contain_text("below what a lone request takes")
    page.fill("input[name=slo-ttft-p99]", "0.5")
    expect(error).to_be_empty()
    page.fill("input[name=max-num-seqs]", "0")
    expect(page.locator('.err[data-for="max-num-seqs"]')).to_contain_text("max-num-seqs must be a whole number > 0")
    page.fill("input[name=max-num-seqs]", "")
    expect(page.locator('.err[data-for="max-num-seqs"]')).to_be_empty()
    page.fill("input[name=step-time]", "/etc/hostname")
    expect(page.locator('.err[data-for="step-time"]')).to_contain_text("the page reads no files")
    page.fill("input[name=step-time]", "")
    ready(page)
    # no GPU preset, no step time: the models under load say why, and the engine's buttons wait
    page.fill("input[name=capacity-tokens]", "100000")
    expect(page.locator("#serving-note")).to_contain_text("the roofline needs the GPU")
    ready(page)
    expect(page.locator("#ttft")).to_have_text("–")
    expect(page.locator("#simulate-load")).to_be_disabled()
    assert not page.problems, page.problems


def test_the_load_chart_draws_the_models_and_the_simulated_points(page):
    for name in ("ttft-on", "ttft-off", "hit-on", "hit-instant"):
        assert int(page.locator(f"#load-chart path.load-{name}").get_attribute("data-points")) >= 20, name
    expect(page.locator("#load-chart .panel-ttft line.target")).to_have_count(1)
    expect(page.locator("#load-chart .panel-ttft text.label")).to_have_text("arrival rate (conversations/s)")
    expect(page.locator("#load-chart g.load-point")).to_have_count(0)
    _shorten(page, "/api/simulate-load", duration=120, warmup=60, replications=2)
    page.click("#simulate-load")
    expect(page.locator("#load-status")).to_contain_text("simulated", timeout=120_000)
    expect(page.locator("#load-status")).to_contain_text("2 replications of 120 s")
    ttft = page.locator("#load-chart .panel-ttft g.load-point")
    assert ttft.count() == 8  # four rates (three of the sustainable rate, and the page's), caching on and off
    expect(page.locator("#load-chart .panel-hit g.load-point")).to_have_count(4)  # nothing hits without caching
    assert ttft.first.locator("line").count() == 3  # the bar and its two caps
    expect(page.locator("#load-chart text.legend", has_text="simulated (95% CI)")).to_have_count(1)
    page.fill("input[name=arrival-rate]", "0.8")  # other inputs: the points are for the old ones
    ready(page)
    expect(page.locator("#load-chart g.load-point")).to_have_count(0)
    assert not page.problems, page.problems


def test_the_plan_is_checked_by_a_short_simulation(page):
    _shorten(page, "/api/simulate-plan", duration=40, warmup=10, replications=1)
    expect(page.locator("#slo-simulated")).to_be_hidden()
    page.click("#simulate-plan")
    simulated = page.locator("#slo-simulated")
    expect(simulated).to_contain_text("Simulated (shortened: 1 replications of 40 s", timeout=120_000)
    expect(simulated).to_contain_text("with prefix caching and")
    expect(page.locator("#plan-status")).to_contain_text("simulated in")
    expect(page.locator("#plan-lines")).to_contain_text("prefix caching on: a lone request takes", use_inner_text=False)
    page.fill("input[name=slo-tpot-p99]", "0.04")  # other targets: the answer was for the old ones
    ready(page)
    expect(simulated).to_be_hidden()
    assert not page.problems, page.problems
