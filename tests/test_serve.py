"""The HTTP API of ``kvsim serve`` (kvsim.serve), on an ephemeral port in this process.

No test asserts on how long anything took (a loaded machine would fail it): the time budgets
are checked with a fake clock (``kvsim.page.CLOCK``) and the model evaluations counted.
"""

import collections
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from kvsim import page, page_serving, serve
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


def complete(server, path, params, rounds=200):
    """/api/sensitivity or /api/advice asked until the answer is complete (as the page does)."""
    for _ in range(rounds):
        status, headers, body = request(server, path, params)
        if status != 200 or not body["incomplete"]:
            return status, headers, body
    raise AssertionError(f"{path} still incomplete after {rounds} requests")


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


# ----------------------------------------------------------------------------- time budgets


class JumpingClock:
    """A clock an hour later at every reading: every budget is spent at its first check."""

    def __init__(self):
        self.readings = 0

    def __call__(self):
        self.readings += 1
        return 3600.0 * self.readings


@pytest.fixture()
def model_calls(monkeypatch):
    """Empty model caches, and the model evaluations counted by method (lru, fifo)."""
    import analytic.plan as plan

    page._model.cache_clear()
    page._fleet_model.cache_clear()
    calls = collections.Counter()
    for method in ("lru", "fifo"):
        real = getattr(plan, f"{method}_model")

        def counted(*args, _real=real, _method=method, **kwargs):
            calls[_method] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(plan, f"{method}_model", counted)
    yield calls
    page._model.cache_clear()
    page._fleet_model.cache_clear()


def _curve_without_ms(body):
    return {k: v for k, v in body["curve"].items() if k != "ms"}


def test_a_curve_out_of_time_has_its_minimum_points_and_is_then_answered_from_the_cache(
        server, monkeypatch, model_calls):
    monkeypatch.setattr(page, "CLOCK", JumpingClock())
    status, _, body = request(server, "/api/calc", {})
    assert status == 200, body
    c = body["curve"]
    assert len(c["lru"]["x"]) == page.CURVE_MIN_POINTS and len(c["seed"]["x"]) == page.CURVE_MIN_POINTS
    assert c["fifo"] == {"x": [], "token": [], "request": []}  # FIFO has no minimum
    assert c["incomplete"] == ["lru", "fifo"]
    assert c["lru"]["x"][0] < 20 and c["lru"]["x"][-1] == pytest.approx(80.0)  # coarse to fine: the whole axis
    assert model_calls == {"lru": 1 + page.CURVE_MIN_POINTS, "fifo": 1}  # the headline models and the points
    # the same request again: everything from the cache, the same answer
    model_calls.clear()
    status, _, again = request(server, "/api/calc", {})
    assert status == 200 and sum(model_calls.values()) == 0
    assert _curve_without_ms(again) == _curve_without_ms(body) and again["methods"] == body["methods"]


def test_with_time_to_spare_the_curve_has_all_its_points(server, monkeypatch, model_calls):
    monkeypatch.setattr(page, "CLOCK", lambda: 0.0)  # time stands still: no budget ever runs out
    c = request(server, "/api/calc", {})[2]["curve"]
    assert len(c["lru"]["x"]) == len(c["fifo"]["x"]) == len(c["seed"]["x"]) == page.CURVE_POINTS
    assert c["incomplete"] == []


def test_a_refined_curve_out_of_time_has_its_minimum_points(server, monkeypatch, model_calls):
    monkeypatch.setattr(page, "CLOCK", JumpingClock())
    status, _, lru = request(server, "/api/curve", {"method": "lru"})
    assert status == 200 and len(lru["lru"]["x"]) == page.CURVE_GOOD_POINTS and lru["incomplete"] == []
    assert model_calls == {"lru": page.CURVE_GOOD_POINTS}
    status, _, fifo = request(server, "/api/curve", {"method": "fifo"})
    assert status == 200 and len(fifo["fifo"]["x"]) == page.CURVE_MIN_POINTS and fifo["incomplete"] == ["fifo"]


def _json_clean(value):
    return json.loads(json.dumps(serve._clean(value)))


def test_sensitivity_out_of_time_is_incomplete_and_goes_on_from_the_cache(server, monkeypatch, model_calls):
    from analytic.sensitivity import sensitivity

    expected = _json_clean(sensitivity(page._scenario({})[1], method="lru"))
    monkeypatch.setattr(page, "CLOCK", JumpingClock())
    rounds = 0
    while True:
        model_calls.clear()
        status, _, body = request(server, "/api/sensitivity", {})
        rounds += 1
        assert status == 200 and sum(model_calls.values()) == 1  # one new evaluation per request, then out of time
        if not body["incomplete"]:
            break
        assert body["rows"] == [] and body["base"] is None
        assert rounds < 300
    assert rounds > 10  # the tornado takes dozens of models
    assert body["rows"] == expected["rows"] and body["base"] == expected["base"]
    model_calls.clear()
    again = request(server, "/api/sensitivity", {})[2]
    assert sum(model_calls.values()) == 0 and not again["incomplete"] and again["rows"] == body["rows"]


def test_advice_out_of_time_is_incomplete_and_goes_on_from_the_cache(server, monkeypatch, model_calls):
    """The FIFO target search (analytic.plan.capacity_for_target, which calls analytic.plan.model
    itself) is bounded and cached too: one new model per request."""
    from analytic.advice import DEFAULT_TARGET, advise

    params = {"policy": "fifo"}
    expected = _json_clean(advise(page._scenario(params)[1], target=DEFAULT_TARGET))
    monkeypatch.setattr(page, "CLOCK", JumpingClock())
    rounds = 0
    while True:
        model_calls.clear()
        status, _, body = request(server, "/api/advice", params)
        rounds += 1
        assert status == 200 and sum(model_calls.values()) == 1, (rounds, model_calls)
        if not body["incomplete"]:
            break
        assert body["advice"] == [] and body["target"] == DEFAULT_TARGET
        assert rounds < 300
    assert rounds > 10
    assert body["advice"] == expected and "target" in {x["id"] for x in body["advice"]}
    model_calls.clear()
    again = request(server, "/api/advice", params)[2]
    assert sum(model_calls.values()) == 0 and again["advice"] == body["advice"]


def test_the_advice_searches_memory_through_the_pages_cached_evaluate(model_calls):
    from analytic.advice import DEFAULT_TARGET, advise

    _, s, _, _, _ = page._scenario({})
    advice = advise(s, target=DEFAULT_TARGET, evaluate=page.cached_evaluate)
    assert "target" in {x["id"] for x in advice}
    counted = sum(model_calls.values())
    assert counted == page._model.cache_info().currsize  # every model the search ran went through the cache
    assert advise(s, target=DEFAULT_TARGET, evaluate=page.cached_evaluate) == advice
    assert sum(model_calls.values()) == counted  # asked again: all from the cache


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("params,field,text", [
    ({"arrival-rate": "0"}, "arrival-rate", "arrival-rate must be a number"),
    ({"arrival-rate": "abc"}, "arrival-rate", "arrival-rate must be a number (got 'abc')"),
    ({"arrival-rate": ""}, "arrival-rate", "arrival-rate is required"),
    ({"arrival_rate": "nan"}, "arrival-rate", "finite"),
    ({"turns": "2.5"}, "turns", "turns must be a whole number >= 1 for fixed turns"),
    ({"turns": "0", "turns-dist": "geometric"}, "turns", "turns must be a number >= 1"),
    ({"gpus": "1.5"}, "gpus", "gpus must be a whole number"),
    ({"gpus": "0"}, "gpus", "gpus must be a whole number"),
    ({"gpu": "tpu-v5"}, "gpu", "gpu must be one of"),
    ({"preset": "gpt-5"}, "preset", "preset must be one of"),
    ({"preset": "llama-3.1-70b"}, "gpu-memory-gb", "does not hold the weights"),
    ({"gpu-memory-gb": "80", "gpu": "h100-80gb"}, "gpu", "give either --gpu or --gpu-memory-gb"),
    ({"layers": "32", "kv-heads": "8", "head-dim": "128"}, "params-b", "params-b or model-size-gb is required"),
    ({"layers": "32", "kv-heads": "0", "head-dim": "128", "params-b": "8"}, "kv-heads", "kv-heads must be"),
    ({"memory-utilization": "1.5"}, "memory-utilization", "memory-utilization must be in (0, 1]"),
    ({"think-dist": "weibull"}, "think-dist", "think-dist must be one of"),
    ({"think-dist": "gamma", "think-cv": "0"}, "think-cv", "think-cv must be a"),
    ({"think-time": "-3"}, "think-time", "think-time must be a"),
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
    status, _, body = request(server, "/api/curve", {**params, "method": "fifo"})
    assert status == 400 and body["field"] == "method"
    status, _, body = request(server, "/api/calc", {**params, "policy": "fifo"})
    assert status == 400 and body["field"] == "policy" and "FIFO model not evaluated" in body["error"]
    status, _, body = complete(server, "/api/advice", params)
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
    status, _, s = complete(server, "/api/sensitivity", {"gpu": "h100-80gb"})
    assert status == 200 and s["method"] == "lru" and len(s["rows"]) >= 7
    assert {"parameter", "base", "low", "high", "token_hit_rate_low", "token_hit_rate_high", "elasticity"} <= set(
        s["rows"][0])
    status, _, a = complete(server, "/api/advice", {"gpu": "h100-80gb", "policy": "fifo", "target-hit-rate": 0.7})
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
    # Long enough to be still running two requests later on an idle machine (3000 s x 2 once
    # finished first there).
    params = {"duration": 15000, "warmup": 300, "replications": 3}
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


# ----------------------------------------------------------------------------- Host check


def raw_http(server, data: bytes, shut: bool = False, timeout: float = 30) -> bytes:
    """What the server answers to ``data`` sent as is on a new connection, up to its closing it
    (a connection it leaves open fails the test after ``timeout``)."""
    with socket.create_connection(server.server_address[:2], timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            raise AssertionError(f"the server left the connection open after {out[:200]!r}") from None
        except ConnectionResetError:
            pass
    return out


def parse_response(raw: bytes):
    """(status, headers (lower-case names), body) of one HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(path: str, host: str | None, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    host_line = f"Host: {host}\r\n" if host is not None else ""
    return f"GET {path} {version}\r\n{host_line}{extra}Connection: close\r\n\r\n".encode()


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}",
                                  "127.0.0.1", "localhost", "[::1]"])
def test_requests_naming_this_server_are_answered(server, host):
    host = host.format(port=server.port)
    status, _, body = parse_response(raw_http(server, get("/api/presets", host)))
    assert status == 200 and "models" in json.loads(body)


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "localhost:1", "127.0.0.1:{port}0",
                                  "127.0.0.1:{port}.evil.example", "localhost.:{port}", "10.0.0.5:{port}",
                                  "192.168.1.20", "[::2]:{port}", "[::1", "", "a b", "localhost:{port}:1"])
def test_other_hosts_are_refused(server, host):
    """DNS rebinding: a page of evil.example re-pointed at 127.0.0.1 sends Host: evil.example."""
    host = host.format(port=server.port)
    status, headers, body = parse_response(raw_http(server, get("/api/presets", host)))
    assert status == 403 and headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert json.loads(body)["error"].startswith("Host ")
    status, headers, body = parse_response(raw_http(server, get("/", host)))
    assert status == 403 and headers["content-type"].startswith("text/plain") and body.startswith(b"403 Forbidden")
    status, _, body = parse_response(raw_http(server, b"POST /api/calc HTTP/1.1\r\nHost: " + host.encode() +
                                              b"\r\nContent-Length: 2\r\n\r\n{}"))
    assert status == 403


def test_a_missing_host_is_refused_on_http_1_1_only(server):
    status, _, body = parse_response(raw_http(server, get("/api/presets", None)))
    assert status == 403 and json.loads(body)["error"] == "a Host header is required"
    assert parse_response(raw_http(server, get("/api/presets", None, "HTTP/1.0")))[0] == 200


def test_host_names_of_a_server_on_all_addresses():
    srv = serve.make_server("0.0.0.0", 0, allow_hosts=["kvsim.example", "Proxy.Example"])
    try:
        port = srv.port
        assert srv.url == f"http://127.0.0.1:{port}/"
        for host in (f"127.0.0.1:{port}", "localhost", f"0.0.0.0:{port}", f"192.168.1.20:{port}", "10.1.2.3",
                     f"[fe80::1]:{port}", f"{socket.gethostname()}:{port}", socket.getfqdn(), "kvsim.example",
                     f"proxy.example:{port}"):
            assert srv.host_refusal(host) is None, host
        for host in ("evil.example", f"evil.example:{port}", "192.168.1.20:1", "1.2.3", None, "[1.2.3.4]"):
            assert srv.host_refusal(host) is not None, host
        assert srv.host_refusal(None, "HTTP/1.0") is None
    finally:
        srv.server_close()


def test_host_names_of_a_server_on_loopback_by_name():
    srv = serve.make_server("localhost", 0)
    try:
        assert srv.host_refusal(f"localhost:{srv.port}") is None and srv.host_refusal("127.0.0.1") is None
        assert srv.host_refusal(f"10.0.0.5:{srv.port}") is not None
        if socket.gethostname().lower() not in ("localhost", "127.0.0.1"):
            assert srv.host_refusal(socket.gethostname()) is not None  # machine names: off loopback only
    finally:
        srv.server_close()


def test_host_names_of_a_server_on_a_lan_address():
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        addresses = set()
    try:  # the address of the default route (a UDP "connection" sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.connect(("198.51.100.1", 9))
            addresses.add(udp.getsockname()[0])
    except OSError:
        pass
    lan = sorted(a for a in addresses if not a.startswith("127.") and a != "0.0.0.0")
    if not lan:
        pytest.skip("this machine's name has no address off loopback")
    srv = serve.make_server(lan[0], 0)
    try:
        port = srv.port
        for host in (f"{lan[0]}:{port}", lan[0], f"localhost:{port}", f"{socket.gethostname()}:{port}"):
            assert srv.host_refusal(host) is None, host
        for host in (f"evil.example:{port}", "10.0.0.5" if lan[0] != "10.0.0.5" else "10.0.0.6"):
            assert srv.host_refusal(host) is not None, host
    finally:
        srv.server_close()


def test_an_ipv6_server():
    try:
        srv = serve.make_server("::1", 0)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert srv.url == f"http://[::1]:{srv.port}/"
        with urllib.request.urlopen(srv.url + "api/presets", timeout=30) as r:
            assert r.status == 200
    finally:
        srv.shutdown()
        srv.server_close()


# ----------------------------------------------------------------------------- request limits


def post(path: str, port: int, headers: str, body: bytes = b"") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n".encode() + body


def test_a_huge_body_is_refused_unread_and_the_connection_closed(server):
    # 10 MB announced, none sent: the answer comes at once (the body is never waited for) and raw_http
    # sees the connection closed
    status, headers, body = parse_response(raw_http(server, post("/api/calc", server.port, "Content-Length: 10000000\r\n")))
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"] == "request body too large: 10,000,000 bytes (at most 65,536)"
    # with Expect: 100-continue the client is told before it sends anything
    raw = raw_http(server, post("/api/calc", server.port, "Expect: 100-continue\r\nContent-Length: 10000000\r\n"))
    assert parse_response(raw)[0] == 413 and b"100 Continue" not in raw
    # at the limit: read and answered
    big = b'{"x": "' + b"y" * (serve.MAX_BODY - 9) + b'"}'
    assert len(big) == serve.MAX_BODY
    status, _, body = parse_response(raw_http(server, post("/api/calc", server.port,
                                                           f"Content-Length: {len(big)}\r\nConnection: close\r\n", big)))
    assert status == 400 and json.loads(body)["error"].startswith("unknown field 'x'")


@pytest.mark.parametrize("length", [b"-5", b"abc", b"1e3", b"12x", b"", b"+5", b"0x10", "\u0663".encode()])
def test_a_bad_content_length_is_400(server, length):
    data = "POST /api/calc HTTP/1.1\r\nHost: localhost\r\n".encode() + b"Content-Length: " + length + b"\r\n\r\n{}"
    status, headers, body = parse_response(raw_http(server, data))
    assert status == 400 and headers["connection"] == "close"
    assert "Content-Length must be a whole number" in json.loads(body)["error"]


def test_other_bodies_the_server_does_not_read(server):
    chunked = post("/api/calc", server.port, "Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n")
    assert parse_response(raw_http(server, chunked))[0] == 411
    two = post("/api/calc", server.port, "Content-Length: 2\r\nContent-Length: 3\r\n", b"{}")
    assert parse_response(raw_http(server, two))[0] == 400
    # the client gives up half way through its body: nothing to answer, the connection is closed
    assert raw_http(server, post("/api/calc", server.port, "Content-Length: 100\r\n", b'{"preset"'), shut=True) == b""


@pytest.mark.parametrize("data,status,text", [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, b"414 Request-URI Too Long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n", 431,
     b"Too many headers"),
    (b"GET / HTTP/1.1\r\nX-Long: " + b"y" * 70_000 + b"\r\n\r\n", 431, b"Line too long"),
    (b"\x00\x01garbage\r\n\r\n", 400, b"Bad request syntax"),
    (b"GET / HTTP/1.1 extra\r\n\r\n", 400, b"Bad request"),
    (b"GET / HTTP/9.9\r\n\r\n", 505, b"Invalid HTTP version"),
    (b"PUT /api/calc HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}", 501, b"Unsupported method"),
])
def test_http_servers_own_limits_answer_in_our_format_and_close(server, data, status, text):
    code, headers, body = parse_response(raw_http(server, data))
    assert code == status and headers["connection"] == "close" and text in body
    assert "Content-Security-Policy" in {k.title(): v for k, v in headers.items()}


def test_a_silent_client_is_disconnected(server, monkeypatch):
    monkeypatch.setattr(serve.Handler, "timeout", 0.5)
    # half a request line, then nothing: closed without an answer
    assert raw_http(server, b"GET /api/pre") == b""
    # half a body, then nothing: 408
    status, _, body = parse_response(raw_http(server, post("/api/calc", server.port, "Content-Length: 100\r\n", b"{")))
    assert status == 408 and "did not arrive" in json.loads(body)["error"]


def test_the_server_keeps_answering_after_bad_requests(server):
    for bad in (b"\x16\x03\x01\x02\x00garbage" * 10 + b"\r\n\r\n",  # e.g. TLS at a plain-HTTP port
                post("/api/calc", server.port, "Content-Length: 10000000\r\n"),
                b"GET\r\n\r\n", b"GET / HTTP/1.1 HTTP/1.1 HTTP/1.1\r\n\r\n", b"\r\n" * 5000):
        raw_http(server, bad)
    status, _, body = request(server, "/api/calc", {"gpu": "h100-80gb"})
    assert status == 200 and body["memory"]["gpu_memory_gib"] == 80
    # one connection, three requests: a body (and one on a GET) is read exactly, the next one follows
    calc = json.dumps({"gpu": "h100-80gb"}).encode()
    data = (post("/api/calc", server.port, f"Content-Length: {len(calc)}\r\n", calc)
            + "GET /api/presets HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello".encode()
            + get("/api/nope", "localhost"))
    raw = raw_http(server, data)
    assert [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)] == [200, 200, 404]


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
    assert capsys.readouterr().err == "kvsim: error: port must be in 0..65535 (got 99999)\n"


def test_serve_on_a_host_it_cannot_listen_on_is_one_line(capsys):
    assert cli_main(["serve", "--host=nonexistent.invalid", "--port", "8765"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsim: error: host: cannot listen on nonexistent.invalid:8765: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_serve_on_a_port_in_use_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvsim: error: port: cannot listen on 127.0.0.1:{port}: ") and err.count("\n") == 1


def test_serve_allow_host_and_its_help(capsys):
    from kvsim.cli.main import build_parser

    assert cli_main(["serve", "--allow-host", "kvsim.example:8765", "--port", "0"]) == 2
    assert "allow-host: 'kvsim.example:8765' is not a host name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    assert "--allow-host NAME" in text and "Host header" in text and "0.0.0.0" in text


# ----------------------------------------------------------------------------- fleets


def _without_timing(body):
    body = json.loads(json.dumps(body))
    body.pop("timing_ms", None)
    if "curve" in body:
        body["curve"].pop("ms")
    return body


@pytest.mark.parametrize("fleet", [{"instances": 1}, {"instances": "1", "router": "random"},
                                   {"instances": "", "router": ""}])
def test_one_instance_answers_as_before(server, fleet, monkeypatch):
    monkeypatch.setattr(page, "CLOCK", lambda: 0.0)  # time stands still: full curves, complete answers
    for params in ({}, {"turns-dist": "geometric", "turns": "40"}, {"capacity-tokens": "80000"}):
        before = _without_timing(request(server, "/api/calc", params)[2])
        status, _, after = request(server, "/api/calc", {**params, **fleet})
        assert status == 200, after
        after = _without_timing(after)
        assert len(after["curve"]["lru"]["x"]) == page.CURVE_POINTS and after["curve"]["incomplete"] == []
        assert after == before and "fleet" not in after  # the curves too
        for path in ("/api/advice", "/api/sensitivity"):
            before = _without_timing(complete(server, path, params)[2])
            assert _without_timing(complete(server, path, {**params, **fleet})[2]) == before, path


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
    status, _, body = complete(server, "/api/advice", {"instances": 3, "router": router, "gpu": "h100-80gb"})
    assert status == 200, body
    routing = next(x for x in body["advice"] if x["id"] == "routing")
    assert routing["lever"] == "router"
    # the same levers as kvsim calc --instances --router --advise
    ref = cli_json(capsys, "calc", "--json", "--gpu", "h100-80gb", "--instances", "3", "--router", router, "--advise")
    assert [(x["id"], x["text"]) for x in body["advice"]] == [(x["id"], x["text"]) for x in ref["advice"]]
    if router == "random":
        assert [x["id"] for x in body["advice"]] == ["routing"] and routing["recommended"]


@pytest.mark.parametrize("params,field,text", [
    ({"instances": "0"}, "instances", "instances must be a whole number"),
    ({"instances": "-2"}, "instances", "instances must be a whole number"),
    ({"instances": "2.5"}, "instances", "instances must be a whole number"),
    ({"instances": "many"}, "instances", "instances must be a whole number"),
    ({"instances": "1001"}, "instances", "1,001 instances are too many for this page, which takes up to 1,000"),
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


# ----------------------------------------------------------------------------- CPU offload


def _tiered_reference(params, method):
    from analytic.tiers import tiered_model

    _, s, capacity, _, _ = page._scenario(params)
    tiers = s.tiers()
    m = tiered_model(s.workload, (capacity.capacity_blocks, tiers.cpu_blocks), s.block_size, method, tiers.mode,
                     capacity.bytes_per_token)
    return m, m.ttft(None, {"cpu": s.offload.cpu_bandwidth_gbps})


@pytest.mark.parametrize("params,argv", [
    ({"cpu-offload-gib": "64"}, ["--cpu-offload-gib", "64"]),
    ({"cpu-offload-gib": "48", "offload-mode": "exclusive", "cpu-bandwidth-gbps": "50", "gpu": "h100-80gb"},
     ["--cpu-offload-gib", "48", "--offload-mode", "exclusive", "--cpu-bandwidth-gbps", "50", "--gpu", "h100-80gb"]),
])
def test_calc_with_cpu_offload_is_the_tiered_model(server, capsys, params, argv):
    status, _, body = request(server, "/api/calc", params)
    assert status == 200, body
    plain = request(server, "/api/calc", {k: v for k, v in params.items() if "offload" not in k and "bandwidth" not in k})[2]
    ref = cli_json(capsys, "calc", "--json", *argv)
    assert body["methods"]["seed"] == plain["methods"]["seed"]  # the seed model stays single-tier
    assert body["memory"] == plain["memory"] == ref["memory"]
    for method in ("lru", "fifo"):
        got = body["methods"][method]
        m, ttft = _tiered_reference(params, method)
        assert got["token_hit_rate"] == pytest.approx(m.token_hit_rate, rel=1e-12)
        assert got["request_hit_rate"] == pytest.approx(m.request_hit_rate, rel=1e-12)
        assert list(got["tiers"]) == ["gpu", "cpu"]
        for name in ("gpu", "cpu"):
            for key, value in m.tiers[name].items():
                assert got["tiers"][name][key] == pytest.approx(value, rel=1e-12), (method, name, key)
        assert sum(t["token_hit_rate"] for t in got["tiers"].values()) == pytest.approx(got["token_hit_rate"])
        assert got["ttft"]["tiered"] == pytest.approx(ttft["tiered"], rel=1e-12)
        assert got["ttft"]["gpu_only"] == pytest.approx(ttft["gpu_only"], rel=1e-12)
        # the GPU alone is the page's single-tier answer; all as kvsim calc --cpu-offload-gib
        assert got["gpu_only"]["token_hit_rate"] == plain["methods"][method]["token_hit_rate"]
        assert got["characteristic_time"] == plain["methods"][method]["characteristic_time"]
        assert got["token_hit_rate"] > got["gpu_only"]["token_hit_rate"]
        for key in ("token_hit_rate", "request_hit_rate", "block_hit_rate"):
            assert got[key] == pytest.approx(ref["methods"][method][key], rel=1e-12)
        for key in ("tiered", "gpu_only", "compute", "saved"):
            assert got["ttft"][key] == pytest.approx(ref["methods"][method]["ttft"][key], rel=1e-12)
    assert body["offload"]["mode"] == params.get("offload-mode", "inclusive") and body["offload"]["tiers"] == ["gpu", "cpu"]
    assert body["offload"]["cpu"]["gib"] == pytest.approx(float(params["cpu-offload-gib"]))
    assert body["offload"] == {**ref["inputs"]["offload"], "tiers": ["gpu", "cpu"]}
    assert body["summary"][-1].startswith("offload   CPU ") and any("tiered models" in n for n in body["notes"])
    assert body["method_notes"]["seed"].startswith("GPU only")


@pytest.mark.parametrize("offload", [{"cpu-offload-gib": "0"}, {"cpu-offload-gib": "", "offload-mode": "exclusive"},
                                     {"cpu-offload-gib": 0, "offload-mode": "exclusive", "cpu-bandwidth-gbps": "50"}])
def test_no_cpu_offload_or_zero_is_none(server, monkeypatch, offload):
    monkeypatch.setattr(page, "CLOCK", lambda: 0.0)  # full curves: the same answer twice
    before = _without_timing(request(server, "/api/calc", {})[2])
    status, _, after = request(server, "/api/calc", offload)
    assert status == 200, after
    assert _without_timing(after) == before and "offload" not in after and "tiers" not in after["curve"]


@pytest.mark.parametrize("params,field,text", [
    ({"cpu-offload-gib": "-1"}, "cpu-offload-gib", "cpu-offload-gib must be a number >= 0"),
    ({"cpu-offload-gib": "lots"}, "cpu-offload-gib", "cpu-offload-gib must be a number (got 'lots')"),
    ({"cpu-offload-gib": "64", "offload-mode": "victim"}, "offload-mode", "offload-mode must be one of inclusive, exclusive"),
    ({"cpu-offload-gib": "64", "cpu-bandwidth-gbps": "0"}, "cpu-bandwidth-gbps", "cpu-bandwidth-gbps must be"),
    ({"cpu-offload-gib": "0", "cpu-bandwidth-gbps": "-5"}, "cpu-bandwidth-gbps", "cpu-bandwidth-gbps must be"),
    ({"cpu-offload-gib": "64", "instances": "2"}, "cpu-offload-gib", "CPU / disk offload takes one instance here"),
    ({"disk-offload-gib": "500"}, "cpu-offload-gib", "a disk tier needs a CPU tier above it"),
    ({"cpu-capacity-tokens": "100000", "instances": "3", "router": "random"}, "cpu-capacity-tokens",
     "the fleet models have no tiers"),
])
def test_bad_offload_input_is_a_400_naming_the_field(server, params, field, text):
    for path in ("/api/calc", "/api/curve", "/api/advice", "/api/sensitivity", "/api/simulate"):
        status, _, body = request(server, path, params)
        assert status == 400, (path, body)
        assert body["field"] == field and text in body["error"] and body["errors"] == {field: body["error"]}, path


def test_curve_with_offload_is_stacked_by_tier(server, monkeypatch):
    params = {"cpu-offload-gib": "32", "offload-mode": "exclusive"}
    monkeypatch.setattr(page, "CLOCK", lambda: 0.0)  # every point
    body = request(server, "/api/calc", params)[2]
    c = body["curve"]
    assert c["tiers"] == ["gpu", "cpu"] and c["x_label"].endswith(", CPU 32 GiB fixed") and c["incomplete"] == []
    plain = request(server, "/api/calc", {})[2]["curve"]
    for method in ("lru", "fifo"):
        d = c[method]
        assert len(d["x"]) == page.CURVE_POINTS and d["x"] == plain[method]["x"]
        assert set(d["tiers"]) == {"gpu", "cpu"} and all(len(v) == len(d["x"]) for v in d["tiers"].values())
        for i, total in enumerate(d["token"]):
            assert d["tiers"]["gpu"][i] + d["tiers"]["cpu"][i] == pytest.approx(total)
            assert d["tiers"]["gpu"][i] == pytest.approx(plain[method]["token"][i], rel=1e-12)  # the GPU alone
            assert total > plain[method]["token"][i]
        i = min(range(len(d["x"])), key=lambda k: abs(d["x"][k] - c["here"]))
        assert d["x"][i] != pytest.approx(c["here"]) or d["token"][i] == pytest.approx(body["methods"][method]["token_hit_rate"])
    assert c["seed"] == plain["seed"]  # single-tier
    # /api/curve refines with the tiers too
    status, _, fifo = request(server, "/api/curve", {**params, "method": "fifo"})
    assert status == 200 and fifo["tiers"] == ["gpu", "cpu"] and fifo["fifo"] == c["fifo"]


def test_an_offload_curve_out_of_time_has_its_minimum_points(server, monkeypatch, model_calls):
    monkeypatch.setattr(page, "CLOCK", JumpingClock())
    status, _, body = request(server, "/api/calc", {"cpu-offload-gib": "64"})
    assert status == 200, body
    c = body["curve"]
    assert len(c["lru"]["x"]) == page.CURVE_MIN_POINTS and c["incomplete"] == ["lru", "fifo"]
    assert {k: len(v) for k, v in c["lru"]["tiers"].items()} == {"gpu": page.CURVE_MIN_POINTS, "cpu": page.CURVE_MIN_POINTS}
    assert c["fifo"] == {"x": [], "token": [], "request": [], "tiers": {"gpu": [], "cpu": []}}
    status, _, lru = request(server, "/api/curve", {"cpu-offload-gib": "64", "method": "lru"})
    assert status == 200 and len(lru["lru"]["x"]) == len(lru["lru"]["tiers"]["cpu"]) == page.CURVE_GOOD_POINTS


def test_advice_with_offload_has_the_offload_lever(server, capsys):
    status, _, plain = complete(server, "/api/advice", {})
    assert status == 200
    lever = next(x for x in plain["advice"] if x["id"] == "offload")  # offered without a CPU tier too
    assert "GiB of CPU offload" in lever["text"] and not lever["text"].startswith("your")
    status, _, body = complete(server, "/api/advice", {"cpu-offload-gib": "64"})
    assert status == 200, body
    lever = next(x for x in body["advice"] if x["id"] == "offload")
    assert lever["lever"] == "CPU offload" and lever["text"].startswith("your 64 GiB of CPU offload (inclusive, 25 GB/s)")
    assert lever["cpu_offload_gib"] == pytest.approx(64)
    calc_lru = request(server, "/api/calc", {"cpu-offload-gib": "64"})[2]["methods"]["lru"]
    assert lever["token_hit_rate"]["then"] == pytest.approx(calc_lru["token_hit_rate"], rel=1e-12)
    assert lever["token_hit_rate"]["now"] == pytest.approx(calc_lru["gpu_only"]["token_hit_rate"], rel=1e-12)
    assert page.ADVICE_OFFLOAD_NOTE in body["notes"]
    ref = cli_json(capsys, "calc", "--json", "--cpu-offload-gib", "64", "--advise")
    assert [(x["id"], x["text"]) for x in body["advice"]] == [(x["id"], x["text"]) for x in ref["advice"]]
    status, _, sens = complete(server, "/api/sensitivity", {"cpu-offload-gib": "64"})
    assert status == 200 and sens["notes"] == [page.SENSITIVITY_OFFLOAD_NOTE]


def test_simulation_with_offload_has_the_tiers(server):
    wait_done(server)
    params = {"arrival-rate": "0.5", "cpu-offload-gib": "64", "duration": 400, "warmup": 100, "replications": 2,
              "points": 1}
    status, _, body = request(server, "/api/simulate", params)
    assert status == 202, body
    done = wait_done(server)
    assert done["state"] == "done", done
    assert {p["policy"] for p in done["points"]} == {"lru", "fifo"} and len(done["points"]) == 4
    for p in done["points"]:
        assert set(p["tiers"]) == {"gpu", "cpu"}
        parts = sum(t["token_hit_rate"]["mean"] for t in p["tiers"].values())
        assert p["token_hit_rate"]["mean"] == pytest.approx(parts)  # the points are the tiered totals
        assert p["tiers"]["cpu"]["token_hit_rate"]["mean"] > 0


# ----------------------------------------------------------------------------- under load (kvsim.page_serving)


LOAD_FIGURES = ("token_hit_rate", "instant_token_hit_rate", "step_s", "batch", "held_blocks", "ttft_s", "tpot_s",
                "output_tokens_per_s", "saturation_arrival_rate", "saturation_requests_per_s", "kv_usage")


def _same_load_figures(got: dict, expected: dict) -> None:
    for key in LOAD_FIGURES:  # None: saturated
        assert got[key] == (expected[key] if expected[key] is None else pytest.approx(expected[key], rel=1e-12)), key
    assert got["saturated"] == expected["saturated"]


@pytest.mark.parametrize("params,argv", [
    ({}, []),
    ({"max-num-seqs": "32", "max-num-batched-tokens": "4096"}, ["--max-num-seqs", "32", "--max-num-batched-tokens", "4096"]),
    ({"step-time": "linear:0.01,2e-5,1e-8", "arrival-rate": "0.5"},
     ["--step-time", "linear:0.01,2e-5,1e-8", "--arrival-rate", "0.5"]),
    ({"preset": "qwen3-32b", "gpu": "h100-80gb", "gpus": "2", "policy": "fifo"},
     ["--preset", "qwen3-32b", "--gpu", "h100-80gb", "--gpus", "2"]),
])
def test_serving_answers_as_kvsim_calc_engine(server, capsys, params, argv):
    status, _, body = complete(server, "/api/serving", params)
    assert status == 200 and not body["incomplete"], body
    on, off = body["caching"]["on"], body["caching"]["off"]
    method = body["policy"]
    ref = cli_json(capsys, "calc", "--engine", "--json", *argv)["under_load"]
    _same_load_figures(on, ref["methods"][method])
    _same_load_figures(off, cli_json(capsys, "calc", "--engine", "--no-prefix-caching", "--json",
                                     *argv)["under_load"]["methods"][method])
    assert {k: v for k, v in body["engine"].items() if k != "line"} == ref["engine"]
    # what caching buys, by the models: hits, a shorter TTFT, or a load served at all (a batch of 32 at most:
    # without caching the steps are too long for it)
    assert on["token_hit_rate"] > 0 and off["instant_token_hit_rate"] == 0
    assert off["saturated"] is not None if params.get("max-num-seqs") == "32" else on["ttft_s"] < off["ttft_s"]
    from analytic.load import mean_prompt

    w = page._scenario(params)[1].workload
    assert on["input_tokens_per_s"] == pytest.approx(w.requests_per_second * mean_prompt(w))
    assert body["slo"] is None and body["notes"][0] == page_serving.MODELS_NOTE


def test_the_engine_fields_change_the_answer(server):
    base = request(server, "/api/serving", {})[2]["caching"]["on"]
    small = request(server, "/api/serving", {"max-num-seqs": "16"})[2]["caching"]["on"]
    assert small["saturation_arrival_rate"] < base["saturation_arrival_rate"]  # a batch of 16 requests at most
    faster = request(server, "/api/serving", {"step-time": "linear:0.001,1e-6,1e-9"})[2]["caching"]["on"]
    assert faster["tpot_s"] < base["tpot_s"] and faster["saturation_arrival_rate"] > base["saturation_arrival_rate"]


def test_serving_slo_bound_is_kvsim_plans(server, capsys):
    slo = "ttft-p99=0.5,tpot-p99=0.05"
    status, _, body = request(server, "/api/serving", {"slo": slo})
    assert status == 200, body
    s = body["slo"]
    assert s["text"] == slo and [t["name"] for t in s["targets"]] == ["ttft-p99", "tpot-p99"]
    plan = cli_json(capsys, "plan", "--slo", slo, "--replications", "1", "--duration", "30", "--warmup", "10", "--json")
    for key in ("on", "off"):
        ref = plan["prefix_caching"][key]
        assert s[key]["model_bound_arrival_rate"] == pytest.approx(ref["model_bound_arrival_rate"], rel=1e-12)
        assert s["lone_request_s"] == pytest.approx(ref["lone_request_s"], rel=1e-12)
    # the bound is below the sustainable rate; a tighter target lowers it
    assert s["on"]["model_bound_arrival_rate"] <= body["caching"]["on"]["saturation_arrival_rate"]
    tight = request(server, "/api/serving", {"slo": "ttft-p99=0.1"})[2]["slo"]
    assert 0 < tight["on"]["model_bound_arrival_rate"] < s["on"]["model_bound_arrival_rate"]
    assert tight["off"]["model_bound_arrival_rate"] < tight["on"]["model_bound_arrival_rate"]
    assert request(server, "/api/serving", {"slo": ""})[2]["slo"] is None  # no targets


def test_serving_chart_is_the_models_against_the_arrival_rate(server):
    from dataclasses import replace

    from analytic.load import under_load
    from analytic.scenario import default_evaluate

    body = request(server, "/api/serving", {})[2]
    c = body["chart"]
    on, off = body["caching"]["on"], body["caching"]["off"]
    assert c["complete"] and c["x"] == sorted(c["x"]) and len(c["x"]) >= page_serving.LOAD_CHART_POINTS
    top = max(on["saturation_arrival_rate"], off["saturation_arrival_rate"])
    assert c["x_max"] == pytest.approx(page_serving.LOAD_CHART_SPAN * top) and c["x"][-1] == pytest.approx(c["x_max"])
    assert 1.0 in c["x"] and on["saturation_arrival_rate"] in c["x"]  # the page's rate, the sustainable one
    i = c["x"].index(1.0)
    assert c["on"]["ttft_s"][i] == on["ttft_s"] and c["off"]["tpot_s"][i] == off["tpot_s"]
    _, s, capacity, _, _ = page._scenario({})
    engine = s.engine_spec()
    for i in (0, len(c["x"]) // 2):
        r = under_load(replace(s.workload, arrival_rate=c["x"][i]), capacity.capacity_blocks, s.block_size, engine,
                       default_evaluate)
        assert c["on"]["ttft_s"][i] == pytest.approx(r.ttft_s, rel=1e-12)
        assert c["on"]["token_hit_rate"][i] == pytest.approx(r.token_hit_rate, rel=1e-12)
    assert c["on"]["ttft_s"][-1] is None and c["off"]["ttft_s"][-1] is None  # past the sustainable rates
    hits = [h for h in c["on"]["token_hit_rate"] if h is not None]
    assert hits[0] > hits[-1]  # the blocks running requests hold shrink the cache as the load grows
    assert all(h <= i for h, i in zip(c["on"]["token_hit_rate"], c["on"]["instant_token_hit_rate"]) if h is not None)


@pytest.fixture()
def empty_caches(model_calls):
    """Empty the hit models' and the load models' caches (a function: call it again to empty them again)."""
    def empty():
        page._model.cache_clear()
        for cache in (page_serving._under_load, page_serving._saturation, page_serving._bound):
            cache.cache_clear()

    empty()
    yield empty
    empty()


def test_serving_out_of_time_gives_the_headline_then_the_chart(server, monkeypatch, model_calls, empty_caches):
    params = {"slo": "ttft-p99=0.5"}
    monkeypatch.setattr(page_serving, "LOAD_CHART_POINTS", 6)
    monkeypatch.setattr(page, "CLOCK", lambda: 0.0)  # time stands still: the whole answer at once
    expected = request(server, "/api/serving", params)[2]
    empty_caches()
    monkeypatch.setattr(page, "CLOCK", JumpingClock())
    rounds, headline_at, sizes = 0, None, []
    while True:
        model_calls.clear()
        status, _, body = request(server, "/api/serving", params)
        rounds += 1
        assert status == 200 and sum(model_calls.values()) <= 1  # one new evaluation per request, then out of time
        if "caching" not in body:
            assert body["incomplete"] and headline_at is None
        else:
            headline_at = headline_at or rounds
            assert body["caching"] == expected["caching"] and body["slo"] == expected["slo"]
            sizes.append(len(body["chart"]["x"]))
            assert body["incomplete"] == (not body["chart"]["complete"])
            if not body["incomplete"]:
                break
        assert rounds < 500
    assert 10 < headline_at < rounds  # the headline first, then the chart's rates, a few at a time
    assert sizes == sorted(sizes) and sizes[-1] == len(expected["chart"]["x"])
    assert body["chart"] == expected["chart"]
    model_calls.clear()
    assert not request(server, "/api/serving", params)[2]["incomplete"] and sum(model_calls.values()) == 0


@pytest.mark.parametrize("params,text", [
    ({"capacity-tokens": "100000"}, "the roofline needs the GPU"),
    ({"gpu-memory-gb": "48"}, "the roofline needs the GPU"),
    ({"instances": "2"}, "take one instance"),
    ({"cpu-offload-gib": "64"}, "no offload tiers"),
    ({"preset": "gemma-2-9b"}, "full-attention models only"),
])
def test_serving_unavailable_says_why(server, params, text):
    status, _, body = request(server, "/api/serving", params)
    assert status == 200 and text in body["unavailable"] and "caching" not in body
    status, _, body = request(server, "/api/simulate-load", params)
    assert status == 400 and text in body["error"]


def test_a_linear_step_time_needs_no_gpu(server):
    status, _, body = request(server, "/api/serving", {"capacity-tokens": "100000", "step-time": "linear:0.01,2e-5,1e-8"})
    assert status == 200 and body["caching"]["on"]["ttft_s"] > 0


@pytest.mark.parametrize("params,field,text", [
    ({"max-num-seqs": "0"}, "max-num-seqs", "max-num-seqs must be a whole number > 0"),
    ({"max-num-seqs": "abc"}, "max-num-seqs", "max-num-seqs must be a whole number (got 'abc')"),
    ({"max-num-batched-tokens": "100"}, "max-num-batched-tokens", "must be >= max-num-seqs (256)"),
    ({"step-time": "/etc/hostname"}, "step-time", "the page reads no files"),
    ({"step-time": "linear:1,2"}, "step-time", "step-time must be"),
    ({"slo": "ttft-p99=-1"}, "slo", "slo: ttft-p99 must be a number of seconds in (0, 1e6] (got '-1')"),
    ({"slo": "ttft-p42=1"}, "slo", "must be METRIC-STAT=SECONDS"),
    ({"slo": "ttft-p99=0.01"}, "slo", "below what a lone request takes"),
])
def test_bad_serving_input_is_a_400_naming_the_field(server, params, field, text):
    status, _, body = request(server, "/api/serving", params)
    assert status == 400 and body["field"] == field and text in body["error"], body
    assert body["errors"] == {field: body["error"]}


def test_presets_name_the_engine_fields(server):
    body = request(server, "/api/presets")[2]
    for flag in ("max-num-batched-tokens", "max-num-seqs", "step-time"):
        assert body["defaults"][flag] is None and flag in body["help"]
    assert "engine" not in body["defaults"] and "no-prefix-caching" not in body["defaults"]


def test_the_engine_simulation_runs_in_the_background_at_a_few_rates(server):
    from dataclasses import replace

    from kvsim.fleet import simulate_fleet

    wait_done(server)
    params = {"arrival-rate": "0.5", "duration": 120, "warmup": 60, "replications": 2}
    status, _, body = request(server, "/api/simulate-load", params)
    assert status == 202 and body["kind"] == "load" and body["params"] == {"arrival-rate": "0.5"}, body
    sat = request(server, "/api/serving", {"arrival-rate": "0.5"})[2]["caching"]["on"]["saturation_arrival_rate"]
    assert body["rates"] == pytest.approx(sorted([f * sat for f in page_serving.LOAD_SIM_FRACTIONS] + [0.5]))
    done = wait_done(server)
    assert done["state"] == "done" and done["done"] == done["total"] == len(done["points"]) == 2 * len(body["rates"])
    for p in done["points"]:
        est = p["ttft_p99"]
        assert est["ci95"][0] <= est["mean"] <= est["ci95"][1]
        assert (p["token_hit_rate"]["mean"] > 0) == (p["caching"] == "on")
    # a point is the engine simulated at its rate with the job's window
    _, s, capacity, _, _ = page._scenario({"arrival-rate": "0.5"})
    point = next(p for p in done["points"] if p["arrival_rate"] == 0.5 and p["caching"] == "on")
    r = simulate_fleet(replace(s.workload, arrival_rate=0.5), capacity.capacity_blocks, 1, engine=s.engine_spec(),
                       block_size=s.block_size, duration=120, warmup=60, replications=2, seed=0).as_dict()
    assert point["ttft_s"]["p99"] == r["serving"]["ttft_s"]["p99"]
    assert point["token_hit_rate"] == r["token_hit_rate"]


def test_the_plan_simulation_is_kvsim_plan_slo(server, capsys):
    wait_done(server)
    slo = "ttft-p99=0.5,tpot-p99=0.05"
    window = {"duration": 40, "warmup": 10, "replications": 1}
    # one instance behind the page's router field (it always sends one): no fleet
    status, _, body = request(server, "/api/simulate-plan", {"slo": slo, "instances": "1", "router": "affinity",
                                                              **window})
    assert status == 202 and body["kind"] == "plan" and body["slo"] == slo, body
    done = wait_done(server)
    assert done["state"] == "done" and done["done"] == done["total"] == 1, done
    ref = cli_json(capsys, "plan", "--slo", slo, *(f"--{k}={v}" for k, v in window.items()), "--json")
    assert done["plan"]["prefix_caching"] == _json_clean(ref["prefix_caching"])
    assert done["plan"]["caching_gain"] == ref["caching_gain"]
    assert "prefix caching on: a lone request takes" in "\n".join(done["plan_lines"])


def test_the_engine_jobs_are_refused_politely(server, monkeypatch):
    wait_done(server)
    status, _, body = request(server, "/api/simulate-plan", {})
    assert status == 400 and body["field"] == "slo"  # a plan needs a target
    monkeypatch.setattr(page_serving, "LOAD_SIM_MAX_REQUESTS", 1000)
    status, _, body = request(server, "/api/simulate-load", {})
    assert status == 400 and "the page runs at most 1,000" in body["error"] and "kvsim plan --slo" in body["error"]
    status, _, body = request(server, "/api/simulate-load", {"duration": 3000})
    assert status == 400 and body["field"] == "duration"
    assert request(server, "/api/simulate")[2]["state"] != "running"
    monkeypatch.undo()
    # a memory sweep held until released: still running whatever the machine's speed
    import kvsim.engine

    release, simulate = threading.Event(), kvsim.engine.simulate
    monkeypatch.setattr(kvsim.engine, "simulate", lambda *a, **k: release.wait(60) and simulate(*a, **k))
    status, _, first = request(server, "/api/simulate", {"duration": 500, "warmup": 300, "replications": 1,
                                                          "points": 1})
    assert status == 202
    try:
        status, _, second = request(server, "/api/simulate-load", {})
        assert status == 409 and "already running" in second["error"]
        assert request(server, "/api/simulate-plan")[2]["kind"] == "memory"  # every job path reports the one job
    finally:
        release.set()
        server.job.cancel(wait=60)
