"""The HTTP API of ``kvsim serve`` (kvsim.serve), on an ephemeral port in this process."""

import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from kvsim import page, serve
from kvsim.cli.main import main as cli_main


@pytest.fixture(scope="module")
def server():
    srv = serve.make_server("127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    srv.job.cancel(wait=30)


def request(server, path, params=None, method=None, raw=None):
    """(status, headers, body): JSON decoded for JSON responses."""
    data = raw if raw is not None else (json.dumps(params).encode() if params is not None else None)
    method = method or ("POST" if data is not None else "GET")
    req = urllib.request.Request(server.url.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, headers, body = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, e.headers, e.read()
    if headers.get("Content-Type", "").startswith("application/json"):
        body = json.loads(body)
    return status, headers, body


def cli_json(capsys, *argv):
    assert cli_main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------- static page


@pytest.mark.parametrize("path,ctype", [("/", "text/html"), ("/index.html", "text/html"),
                                        ("/app.js", "text/javascript"), ("/style.css", "text/css")])
def test_static_files_are_served_with_a_strict_policy(server, path, ctype):
    status, headers, body = request(server, path)
    assert status == 200 and headers["Content-Type"].startswith(ctype) and len(body) > 500
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp


def test_the_page_refers_to_nothing_outside_the_server(server):
    allowed = {"http://www.w3.org/2000/svg"}  # the SVG namespace name: an identifier, never fetched
    for path in ("/", "/app.js", "/style.css"):
        text = request(server, path)[2].decode()
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'<>)]*", text))
        assert urls <= allowed, (path, urls - allowed)
        assert "@import" not in text and "url(" not in text.replace("data:", "")
    html = request(server, "/")[2].decode()
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith("/") and not ref.startswith("//") or ref.startswith("data:"), ref


def test_unknown_paths(server):
    assert request(server, "/nope.js")[0] == 404
    status, _, body = request(server, "/api/nope")
    assert status == 404 and "no such endpoint" in body["error"]
    assert request(server, "/../kvsim/serve.py")[0] == 404


# ----------------------------------------------------------------------------- presets and calc


def test_presets(server):
    status, _, body = request(server, "/api/presets")
    assert status == 200
    assert body["models"]["llama-3.1-8b"]["bytes_per_token_bf16"] == 131072
    assert body["gpus"]["h100-80gb"] == 80.0 and "fp8" in body["dtypes"]
    d = body["defaults"]
    assert d["preset"] == "llama-3.1-8b" and d["gpu"] == "a100-40gb" and d["arrival-rate"] == 1.0
    assert d["block-size"] == 16 and d["policy"] == "lru" and d["target-hit-rate"] == 0.8
    assert body["choices"]["think-dist"] == ["exp", "det", "lognormal", "gamma"]
    assert "conversations" not in d  # no server-side files from a web page


@pytest.mark.parametrize("params,argv", [
    ({}, []),
    ({"preset": "qwen3-32b", "gpu": "h100-80gb", "gpus": "2", "kv-dtype": "fp8"},
     ["--preset", "qwen3-32b", "--gpu", "h100-80gb", "--gpus", "2", "--kv-dtype", "fp8"]),
    ({"turns-dist": "geometric", "turns": 8, "system-prompt-tokens": "1000", "think-dist": "gamma", "think-cv": "2"},
     ["--turns-dist", "geometric", "--turns", "8", "--system-prompt-tokens", "1000", "--think-dist", "gamma",
      "--think-cv", "2"]),
    ({"capacity-tokens": "200000", "block-size": "32"}, ["--capacity-tokens", "200000", "--block-size", "32"]),
])
def test_calc_answers_as_kvsim_calc(server, capsys, params, argv):
    status, _, body = request(server, "/api/calc", params)
    assert status == 200, body
    ref = cli_json(capsys, "calc", "--json", *argv)
    assert body["memory"] == ref["memory"]
    for method in ("seed", "lru", "fifo"):
        for key in ("token_hit_rate", "request_hit_rate"):
            expected = ref["methods"][method][key]  # None: the seed model has no token hit rate
            got = body["methods"][method][key]
            assert got == expected if expected is None else got == pytest.approx(expected, rel=1e-12), (method, key)
    assert body["summary"][0].startswith("model ")


def test_calc_by_get_query_string(server):
    status, _, body = request(server, "/api/calc?preset=llama-3.1-70b&gpu=h100-80gb&gpus=2&arrival_rate=2")
    assert status == 200 and body["memory"]["gpu_memory_gib"] == 160


def test_calc_curve_is_the_memory_figure(server):
    body = request(server, "/api/calc", {})[2]
    c = body["curve"]
    assert c["here"] == 40.0 and c["x_label"].startswith("GPU memory per GPU (GiB)")
    assert len(c["lru"]["x"]) >= page.CURVE_MIN_POINTS and len(c["lru"]["x"]) <= page.CURVE_POINTS
    assert c["lru"]["x"] == sorted(c["lru"]["x"]) and c["lru"]["x"][-1] == pytest.approx(80.0)
    assert all(0 <= v <= 1 for v in c["lru"]["token"] + c["lru"]["request"] + c["seed"]["request"])
    assert c["lru"]["token"][-1] > body["methods"]["lru"]["token_hit_rate"] > c["lru"]["token"][0]
    assert len(c["seed"]["x"]) == len(c["lru"]["x"])
    # what /api/calc left out, /api/curve completes
    status, _, fifo = request(server, "/api/curve", {"method": "fifo"})
    assert status == 200 and len(fifo["fifo"]["x"]) >= page.CURVE_MIN_POINTS
    status, _, bad = request(server, "/api/curve", {"method": "lfu"})
    assert status == 400 and bad["field"] == "method"


def test_calc_is_fast(server):
    """The analytic answers well under 200 ms (the curve stops refining at CURVE_BUDGET_S)."""
    body = request(server, "/api/calc", {"arrival-rate": "1.2345"})[2]  # nothing cached
    assert body["timing_ms"]["models"] < 200
    assert body["timing_ms"]["total"] < 200 + 1000 * page.CURVE_BUDGET_S
    start = time.perf_counter()
    request(server, "/api/calc", {"arrival-rate": "1.2345"})  # cached
    assert time.perf_counter() - start < 0.2


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("params,field,text", [
    ({"arrival-rate": "0"}, "arrival-rate", "arrival-rate must be a number > 0"),
    ({"arrival-rate": "abc"}, "arrival-rate", "arrival-rate must be a number (got 'abc')"),
    ({"arrival-rate": ""}, "arrival-rate", "arrival-rate is required"),
    ({"arrival_rate": "nan"}, "arrival-rate", "finite"),
    ({"turns": "2.5"}, "turns", "turns must be a whole number >= 1 for fixed turns"),
    ({"turns": "0", "turns-dist": "geometric"}, "turns", "turns must be a number >= 1"),
    ({"gpus": "1.5"}, "gpus", "gpus must be a whole number"),
    ({"gpus": "0"}, "gpus", "gpus must be a whole number > 0"),
    ({"gpu": "tpu-v5"}, "gpu", "gpu must be one of"),
    ({"preset": "gpt-5"}, "preset", "preset must be one of"),
    ({"preset": "llama-3.1-70b"}, "gpu-memory-gb", "does not hold the weights"),
    ({"gpu-memory-gb": "80", "gpu": "h100-80gb"}, "gpu", "give either --gpu or --gpu-memory-gb"),
    ({"layers": "32", "kv-heads": "8", "head-dim": "128"}, "params-b", "params-b or model-size-gb is required"),
    ({"layers": "32", "kv-heads": "0", "head-dim": "128", "params-b": "8"}, "kv-heads", "kv-heads must be"),
    ({"memory-utilization": "1.5"}, "memory-utilization", "memory-utilization must be in (0, 1]"),
    ({"think-dist": "weibull"}, "think-dist", "think-dist must be one of"),
    ({"think-dist": "gamma", "think-cv": "0"}, "think-cv", "think-cv must be a positive number"),
    ({"think-time": "-3"}, "think-time", "think-time must be a positive number"),
    ({"input-tokens": "0"}, "input-tokens", "input-tokens must be >= 1 when there is no system prompt"),
    ({"input-cv": "-1"}, "input-cv", "input-cv must be >= 0"),
    ({"output-tokens": "12.5"}, "output-tokens", "output-tokens must be a whole number"),
    ({"block-size": "0"}, "block-size", "block-size must be a whole number > 0"),
    ({"capacity-tokens": "-5"}, "capacity-tokens", "capacity-tokens must be a whole number > 0"),
    ({"kv-dtype": "fp4"}, "kv-dtype", "kv-dtype must be one of"),
    ({"policy": "lfu"}, "policy", "policy must be one of"),
    ({"favourite-colour": "blue"}, "favourite-colour", "unknown field"),
    ({"conversations": "/etc/passwd"}, "conversations", "unknown field"),
    ({"turns": "30000"}, "turns", "too long for this page"),
    ({"turns": "1000", "turns-dist": "geometric"}, "turns", "conversations that reach 27,"),
    ({"turns": "100", "turns-dist": "geometric", "input-cv": "1"}, "turns", "up to 2,000 with token counts drawn"),
])
def test_bad_input_is_a_400_naming_the_field(server, params, field, text):
    status, _, body = request(server, "/api/calc", params)
    assert status == 400, body
    assert body["field"] == field and text in body["error"]
    assert body["errors"] == {field: body["error"]}


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object(server, raw):
    status, _, body = request(server, "/api/calc", raw=raw)
    assert status == 400 and "JSON object" in body["error"] and body["errors"] == {}


def test_fifo_is_left_out_where_it_would_be_slow(server):
    """Geometric turns with mean 40 reach ~1,100 turns: the FIFO model would take seconds."""
    params = {"turns-dist": "geometric", "turns": "40"}
    status, _, body = request(server, "/api/calc", params)
    assert status == 200 and body["methods"]["fifo"] is None and body["methods"]["lru"]["token_hit_rate"] > 0
    assert "FIFO model not evaluated here" in body["notes"][0] and "fifo" not in body["curve"]
    assert body["timing_ms"]["total"] < 2000
    status, _, body = request(server, "/api/curve", {**params, "method": "fifo"})
    assert status == 400 and body["field"] == "method"
    status, _, body = request(server, "/api/calc", {**params, "policy": "fifo"})
    assert status == 400 and body["field"] == "policy" and "FIFO model not evaluated" in body["error"]
    status, _, body = request(server, "/api/advice", params)
    assert status == 200 and "policy" not in {x["id"] for x in body["advice"]} and body["notes"]
    # long fixed conversations are cheap for FIFO: still evaluated
    body = request(server, "/api/calc", {"turns": "600"})[2]
    assert body["methods"]["fifo"] is not None and body["notes"] == []


def test_advice_target_is_validated(server):
    status, _, body = request(server, "/api/advice", {"target-hit-rate": "1.5"})
    assert status == 400 and body["field"] == "target-hit-rate"


def test_error_field():
    f = page.error_field
    assert f("sliding-layers must be <= layers (32) (got 40)") == "sliding-layers"
    assert f("--preset cannot be combined with --layers/--kv-heads/--head-dim") == "preset"
    assert f("give only one of --capacity-tokens and --capacity-gib") == "capacity-tokens"
    assert f("tokens must be a whole number >= 0 (got -1)") is None
    assert f("something else entirely") is None
    assert f("give either --gpu or --gpu-memory-gb, not both") == "gpu"
    assert f("give either GPU memory (--gpu/--gpu-memory-gb) or the capacity, not both") == "gpu"


# ----------------------------------------------------------------------------- sensitivity, advice


def test_sensitivity_and_advice(server):
    status, _, s = request(server, "/api/sensitivity", {"gpu": "h100-80gb"})
    assert status == 200 and s["method"] == "lru" and len(s["rows"]) >= 7
    assert {"parameter", "base", "low", "high", "token_hit_rate_low", "token_hit_rate_high", "elasticity"} <= set(
        s["rows"][0])
    status, _, a = request(server, "/api/advice", {"gpu": "h100-80gb", "policy": "fifo", "target-hit-rate": 0.7})
    assert status == 200 and a["target"] == 0.7
    ids = {x["id"] for x in a["advice"]}
    assert {"kv-dtype-fp8", "target", "policy"} <= ids
    assert next(x for x in a["advice"] if x["id"] == "policy")["text"].startswith("LRU eviction instead of FIFO")


# ----------------------------------------------------------------------------- simulation


def wait_done(server, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = request(server, "/api/simulate")[2]
        if status["state"] != "running":
            return status
        time.sleep(0.1)
    raise AssertionError("the simulation did not finish")


def test_simulation_runs_in_the_background_and_reports_points(server):
    wait_done(server)
    params = {"arrival-rate": "0.5", "duration": 400, "warmup": 100, "replications": 2, "points": 2}
    status, _, body = request(server, "/api/simulate", params)
    assert status == 202 and body["state"] == "running"
    assert body["params"] == {"arrival-rate": "0.5"} and body["settings"]["replications"] == 2
    done = wait_done(server)
    assert done["state"] == "done" and done["done"] == done["total"] == len(done["points"])
    xs = {p["x"] for p in done["points"]}
    assert 40.0 in xs and len(xs) == 3  # the scenario's memory and 2 more
    assert {p["policy"] for p in done["points"]} == {"lru", "fifo"}
    for p in done["points"]:
        est = p["token_hit_rate"]
        lo, hi = est["ci95"]
        assert 0 <= lo <= est["mean"] <= hi <= 1


def test_a_second_simulation_is_refused_politely_while_one_runs(server):
    wait_done(server)
    params = {"duration": 3000, "warmup": 300, "replications": 2}
    status, _, first = request(server, "/api/simulate", params)
    assert status == 202
    try:
        status, _, second = request(server, "/api/simulate", {})
        assert status == 409
        assert second["state"] == "running"
        assert "already running" in second["error"] and "Please wait" in second["error"]
        assert request(server, "/api/simulate")[2]["state"] == "running"  # the first one goes on
    finally:
        server.job.cancel(wait=60)
    assert request(server, "/api/simulate")[2]["state"] == "cancelled"


@pytest.mark.parametrize("params,field", [
    ({"replications": 0}, "replications"), ({"duration": "long"}, "duration"), ({"points": 50}, "points"),
    ({"duration": 100, "warmup": 200}, "warmup"), ({"arrival-rate": "-1"}, "arrival-rate"),
    ({"arrival-rate": "1000"}, "arrival-rate"),
])
def test_simulation_input_is_validated(server, params, field):
    wait_done(server)
    status, _, body = request(server, "/api/simulate", params)
    assert status == 400 and body["field"] == field
    assert request(server, "/api/simulate")[2]["state"] != "running"


# ----------------------------------------------------------------------------- the command


def test_serve_command_prints_its_url_and_serves(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "kvsim.cli", "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line).group(1)
        with urllib.request.urlopen(url + "api/presets", timeout=30) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_kvsim_serve_when_wired(capsys):
    from kvsim.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    if "serve" not in sub.choices:
        pytest.skip("kvsim serve is not wired into kvsim/cli.py yet")
    assert cli_main(["serve", "--port", "99999"]) == 2
    assert "port" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fleets


def _without_timing(body):
    body = json.loads(json.dumps(body))
    body.pop("timing_ms", None)
    if "curve" in body:
        body["curve"].pop("ms")
    return body


def _same_curves(a, b):
    """Curves equal where both have points (how many fit in the time budget varies)."""
    assert {k: v for k, v in a.items() if k not in ("lru", "fifo", "seed", "incomplete")} == \
        {k: v for k, v in b.items() if k not in ("lru", "fifo", "seed", "incomplete")}
    for name in ("lru", "fifo", "seed"):
        assert (name in a) == (name in b)
        if name not in a:
            continue
        pa, pb = (dict(zip(c[name]["x"], zip(*(c[name][m] for m in c[name] if m != "x")))) for c in (a, b))
        common = set(pa) & set(pb)
        assert len(common) >= page.CURVE_MIN_POINTS and all(pa[x] == pb[x] for x in common), name


@pytest.mark.parametrize("fleet", [{"instances": 1}, {"instances": "1", "router": "random"},
                                   {"instances": "", "router": ""}])
def test_one_instance_answers_as_before(server, fleet):
    for params in ({}, {"turns-dist": "geometric", "turns": "40"}, {"capacity-tokens": "80000"}):
        request(server, "/api/calc", params)  # warm the caches: both calls then get full curves
        before = _without_timing(request(server, "/api/calc", params)[2])
        status, _, after = request(server, "/api/calc", {**params, **fleet})
        assert status == 200, after
        after = _without_timing(after)
        _same_curves(before.pop("curve"), after.pop("curve"))
        assert after == before and "fleet" not in after
        for path in ("/api/advice", "/api/sensitivity"):
            before = _without_timing(request(server, path, params)[2])
            assert _without_timing(request(server, path, {**params, **fleet})[2]) == before, path


def test_random_fleet_is_the_fleet_model(server):
    from analytic.fleet import fleet_model

    params = {"instances": "3", "router": "random"}
    status, _, body = request(server, "/api/calc", params)
    assert status == 200, body
    _, s, capacity, _, _ = page._scenario({})
    model = fleet_model(s.workload, [capacity.capacity_blocks] * 3, "random", "lru", s.block_size)
    lru = body["methods"]["lru"]
    assert lru["token_hit_rate"] == pytest.approx(model.token_hit_rate, rel=1e-12)
    assert lru["request_hit_rate"] == pytest.approx(model.request_hit_rate, rel=1e-12)
    single = request(server, "/api/calc", {})[2]["methods"]["lru"]["token_hit_rate"]
    assert lru["token_hit_rate"] < single  # random routing scatters the conversations
    assert body["fleet"] == {"instances": 3, "router": "random"}
    assert body["methods"]["fifo"] is None and "random routing" in body["method_notes"]["fifo"]
    assert body["methods"]["seed"] is None and body["memory"] == request(server, "/api/calc", {})[2]["memory"]
    c = body["curve"]
    assert "fifo" not in c and "seed" not in c and c["x_label"].endswith("per instance, 3 instances")
    assert c["here"] == 40.0 and len(c["lru"]["x"]) >= page.CURVE_MIN_POINTS
    status, _, bad = request(server, "/api/curve", {**params, "method": "fifo"})
    assert status == 400 and bad["field"] == "method"
    status, _, bad = request(server, "/api/calc", {**params, "policy": "fifo"})
    assert status == 400 and bad["field"] == "policy"


def test_affinity_fleet_is_each_instance_at_its_share(server, capsys):
    from analytic.fleet import fleet_model

    status, _, body = request(server, "/api/calc", {"instances": "4", "capacity-tokens": "60000"})
    assert status == 200, body
    _, s, capacity, _, _ = page._scenario({"capacity-tokens": "60000"})
    for method in ("lru", "fifo"):
        model = fleet_model(s.workload, [capacity.capacity_blocks] * 4, "affinity", method, s.block_size)
        assert body["methods"][method]["token_hit_rate"] == pytest.approx(model.token_hit_rate, rel=1e-12)
    c = body["curve"]
    assert c["x_label"] == "KV cache per instance (GiB), 4 instances" and "seed" not in c
    # at the scenario's memory the curve is the headline (the same model, per instance at lambda/4)
    ref = cli_json(capsys, "calc", "--json", "--capacity-tokens", "60000", "--instances", "4")
    assert body["methods"]["lru"]["token_hit_rate"] == pytest.approx(ref["methods"]["lru"]["token_hit_rate"])


@pytest.mark.parametrize("router", ["affinity", "random"])
def test_fleet_advice_has_the_routing_lever(server, capsys, router):
    status, _, body = request(server, "/api/advice", {"instances": 3, "router": router, "gpu": "h100-80gb"})
    assert status == 200, body
    routing = next(x for x in body["advice"] if x["id"] == "routing")
    assert routing["lever"] == "router"
    # the same levers as kvsim calc --instances --router --advise
    ref = cli_json(capsys, "calc", "--json", "--gpu", "h100-80gb", "--instances", "3", "--router", router, "--advise")
    assert [(x["id"], x["text"]) for x in body["advice"]] == [(x["id"], x["text"]) for x in ref["advice"]]
    if router == "random":
        assert [x["id"] for x in body["advice"]] == ["routing"] and routing["recommended"]


@pytest.mark.parametrize("params,field,text", [
    ({"instances": "0"}, "instances", "instances must be a whole number > 0"),
    ({"instances": "-2"}, "instances", "instances must be a whole number > 0"),
    ({"instances": "2.5"}, "instances", "instances must be a whole number"),
    ({"instances": "many"}, "instances", "instances must be a whole number"),
    ({"router": "round-robin"}, "router", "router must be one of affinity, random"),
    ({"instances": 2, "router": "cache-aware"}, "router", "router must be one of affinity, random"),
])
def test_bad_fleet_input_is_a_400_naming_the_field(server, params, field, text):
    for path in ("/api/calc", "/api/advice", "/api/simulate"):
        status, _, body = request(server, path, params)
        assert status == 400, (path, body)
        assert body["field"] == field and text in body["error"] and body["errors"] == {field: body["error"]}


def test_fleet_simulation(server):
    wait_done(server)
    params = {"arrival-rate": "0.5", "instances": "2", "router": "random", "duration": 400, "warmup": 100,
              "replications": 2, "points": 1}
    status, _, body = request(server, "/api/simulate", params)
    assert status == 202, body
    assert body["total"] == 2 and body["x_label"].endswith("per instance, 2 instances")
    done = wait_done(server)
    assert done["state"] == "done", done
    assert {p["policy"] for p in done["points"]} == {"lru"} and len(done["points"]) == 2
    for p in done["points"]:
        est = p["token_hit_rate"]
        assert 0 <= est["ci95"][0] <= est["mean"] <= est["ci95"][1] <= 1
