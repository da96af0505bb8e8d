"""Runs the whole benchmark and writes bench/RESULTS.md.

    make bench            (= python -m bench.run_all)
    python -m bench.run_all --standin     (only the stand-in model's scenarios)

For each model (all-MiniLM-L6-v2, and a random-weight Llama of about 100M parameters served
as an LLM2Vec model): the in-process limit, then the gateway, then the seed-style Flask
baseline, each on the same scenarios. Then the stand-in for a GPU-sized model
(bench/standin.py): its limit, and the gateway with thread and with process workers.
Servers are pinned to core 0 with one torch thread (a server's model workers inherit
that), the load generator to core 1 (`taskset`), so runs are comparable. Everything listens on
127.0.0.1 and every load run is bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.workload import MINILM, STANDIN, BenchModel, config_toml, make_llama_7b_shape, make_llama_100m

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-0123456789"


@dataclass(frozen=True)
class Setup:
    """Where processes run and how the engine is sized."""

    server_core: str | None = "0"
    client_core: str | None = "1"
    # The stand-in's worker process; None: the client's core, the client then sharing the server's.
    worker_core: str | None = None
    torch_threads: int = 1
    batch_size: int = 32
    batch_tokens: int = 16384
    device: str = "cpu"
    seconds_scale: float = 1.0
    batch_wait_ms: float = 5.0
    cuda_graphs: bool = True
    client: str = "aiohttp"  # bench/loadgen.py --client
    # The gateway serves its Prometheus metrics; the engine's cost figures are read after
    # each scenario (`--metrics`).
    metrics: bool = False


CPU = Setup()
# The GPU machine: 16 cores, no pinning, all of torch's threads; a bigger token budget.
GPU = Setup(
    server_core=None,
    client_core=None,
    torch_threads=0,
    batch_size=32,
    batch_tokens=32768,
    device="cuda",
    seconds_scale=0.5,
)


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    inputs: int
    words: int
    requests: int
    seconds: float


SCENARIOS = [
    Scenario("latency: c=1, 1 input x 12 words", 1, 1, 12, 400, 15),
    Scenario("small: c=32, 1 input x 12 words", 32, 1, 12, 4000, 20),
    Scenario("bulk: c=8, 32 inputs x 60 words", 8, 32, 60, 400, 25),
]
# The stand-in adds c=64: the fewest closed-loop clients that can keep two 32-row batches
# full, one running while the other's answers go out and its next requests come in.
STANDIN_SCENARIOS = [
    *SCENARIOS[:2],
    Scenario("small: c=64, 1 input x 12 words", 64, 1, 12, 6000, 20),
]
# The same c=1 run on a stand-in whose forward is only its 1 ms sleep and the vectors: the
# gateway's own c=1 cost, without the long idle that a 20 ms forward leaves its core in.
INSTANT_COSTS = ("--fixed-ms=0", "--row-ms=0")
INSTANT_SCENARIO = Scenario("latency: c=1, instant forward", 1, 1, 12, 2000, 10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _pinned(core: str | None, *argv: str) -> list[str]:
    """argv run on `core` (None: anywhere, as on the GPU machine)."""
    return (["taskset", "-c", core] if core is not None else []) + [sys.executable, *argv]


class RssSampler:
    """Samples a process's resident memory every 50 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        """The server's and its model workers' resident memory."""
        processes = [self._process, *self._process.children(recursive=True)]
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                total += int(process.memory_info().rss)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.Error:
                return
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait(url: str, process: subprocess.Popen[bytes], seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            response = httpx.get(url, timeout=2)
            # Ready, and every worker loaded: the background worker (batch jobs) loads after
            # /ready turns 200, and its memory belongs to "after load", not "under load".
            body = response.json() if response.status_code == 200 else {}
            workers = body.get("workers", {}) if isinstance(body, dict) else {}
            if response.status_code == 200 and all(
                w.get("serving") for lanes in workers.values() for w in lanes
            ):
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {seconds} s")


def _loadgen(url: str, model: str, scenario: Scenario, setup: Setup) -> dict[str, Any]:
    argv = _pinned(
        setup.client_core,
        "-m",
        "bench.loadgen",
        f"--url={url}",
        f"--key={KEY}",
        f"--model={model}",
        f"--concurrency={scenario.concurrency}",
        f"--inputs={scenario.inputs}",
        f"--words={scenario.words}",
        f"--requests={scenario.requests}",
        f"--seconds={scenario.seconds * setup.seconds_scale}",
        f"--client={setup.client}",
    )
    return _run_json(argv, f"{scenario.name}: load generator", 900)


def _in_process_limit(argv: list[str]) -> dict[str, Any]:
    """A model's in-process limit (bench.limit, bench.standin limit): every target is judged
    against it, so the run stops if it fails."""
    out = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    limit: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"   {json.dumps(limit)}", flush=True)
    return limit


def _run_json(argv: list[str], label: str, timeout: float) -> dict[str, Any]:
    """A bench client's result: the JSON on its last line, or {"error": its last words}."""
    out = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        print(f"   {label} failed: {last}", flush=True)
        return {"error": last}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _batch_scenario(url: str, model: BenchModel, setup: Setup, lines: int) -> dict[str, Any]:
    """The latency scenario again, with a Batch API job of `lines` requests running behind it."""
    latency = SCENARIOS[0]
    argv = _pinned(
        setup.client_core,
        "-m",
        "bench.batch_scenario",
        f"--url={url}",
        f"--key={KEY}",
        f"--model={model.name}",
        f"--lines={lines}",
        f"--latency-words={latency.words}",
        f"--requests={latency.requests}",
        f"--seconds={latency.seconds * setup.seconds_scale}",
    ) + ([f"--client-core={setup.client_core}"] if setup.client_core is not None else [])
    return _run_json(argv, "batch during latency:", 3600)


def _idle_probe(url: str, setup: Setup, pause_ms: float) -> dict[str, Any]:
    argv = _pinned(setup.client_core, "-m", "bench.idle_probe", f"--url={url}", f"--pause-ms={pause_ms:.1f}")
    result = _run_json(argv, "idle probe:", 300)
    if "error" not in result:
        print(f"   idle probe: {json.dumps(result)}", flush=True)
    return result


ENGINE_COSTS = {"fixed_ms": "gateway_forward_fixed_seconds", "return_ms": "gateway_request_return_seconds"}


def _engine_costs(metrics_url: str, model: str) -> dict[str, float]:
    """The figures the engine weighs an early batch with (app/engine/pipelining.py), in ms:
    a forward's fitted fixed cost and how soon a request comes back after its batch."""
    text = httpx.get(metrics_url, timeout=10).text
    costs = {}
    for key, metric in ENGINE_COSTS.items():
        prefix = f'{metric}{{model="{model}"}} '
        for line in text.splitlines():
            if line.startswith(prefix):
                costs[key] = float(line[len(prefix) :]) * 1000
    return costs


def _serve(
    argv: list[str],
    ready_url: str,
    url: str,
    model: BenchModel,
    setup: Setup,
    scenarios: list[Scenario] = SCENARIOS,
    batch_lines: int = 0,
    worker_core: str | None = None,
    idle_pause_ms: float | None = None,
    metrics_url: str | None = None,
) -> dict[str, Any]:
    """Start a server, run every scenario against it, and read its memory; with
    `batch_lines`, then the latency scenario again with a batch job running. With
    `worker_core`, the server's model worker processes are moved to that core once ready.
    With `idle_pause_ms`, then bench.idle_probe with that pause. With `metrics_url`, the
    engine's cost figures are read after each scenario."""
    env = _env() | {"GATEWAY_API_KEY": KEY}
    log = Path(tempfile.mkdtemp()) / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        try:
            _wait(ready_url, process)
        except RuntimeError:
            print(log.read_text()[-3000:], flush=True)
            raise
        if worker_core is not None:
            for child in psutil.Process(process.pid).children(recursive=True):
                os.sched_setaffinity(child.pid, {int(worker_core)})
        with RssSampler(process.pid) as sampler:
            after_load = sampler.rss()
            runs = {}
            for scenario in scenarios:
                runs[scenario.name] = _loadgen(url, model.name, scenario, setup)
                if metrics_url is not None:
                    runs[scenario.name]["engine_costs"] = _engine_costs(metrics_url, model.name)
                print(f"   {scenario.name}: {json.dumps(runs[scenario.name])}", flush=True)
        result = {"runs": runs, "rss_after_load": after_load, "rss_peak": sampler.peak}
        if batch_lines:
            result["batch"] = _batch_scenario(url, model, setup, batch_lines)
            print(f"   latency with a batch job: {json.dumps(result['batch'])}", flush=True)
        if idle_pause_ms is not None:
            result["idle"] = _idle_probe(url, setup, idle_pause_ms)
        return result
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def bench_model(model: BenchModel, setup: Setup, batch_lines: int = 0) -> dict[str, Any]:
    print(f"== {model.name}: in-process limit", flush=True)
    limit_argv = _pinned(
        setup.server_core,
        "-m",
        "bench.limit",
        f"--name={model.name}",
        f"--kind={model.kind}",
        f"--base={model.base_model}",
        f"--max-length={model.max_length}",
        f"--batch-size={setup.batch_size}",
        f"--threads={setup.torch_threads}",
        f"--device={setup.device}",
        *([] if setup.cuda_graphs else ["--no-cuda-graphs"]),
    )
    limit = _in_process_limit(limit_argv)

    print(f"== {model.name}: gateway", flush=True)
    port = _free_port()
    metrics_port = _free_port() if setup.metrics else None
    work = Path(tempfile.mkdtemp())
    config = work / "bench.toml"
    store = f'\n[batch]\ndb_path = "{work / "batches.sqlite3"}"\nfiles_dir = "{work / "files"}"\n'
    config.write_text(
        config_toml(
            model,
            port,
            torch_threads=setup.torch_threads,
            batch_size=setup.batch_size,
            batch_tokens=setup.batch_tokens,
            batch_wait_ms=setup.batch_wait_ms,
            cuda_graphs=setup.cuda_graphs,
            metrics_port=metrics_port,
        )
        + store
    )
    url = f"http://127.0.0.1:{port}"
    gateway = _serve(
        _pinned(setup.server_core, "-m", "app", "serve", "--config", str(config)),
        f"{url}/ready",
        url,
        model,
        setup,
        batch_lines=batch_lines,
        metrics_url=None if metrics_port is None else f"http://127.0.0.1:{metrics_port}/metrics",
    )

    print(f"== {model.name}: seed-style baseline", flush=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    baseline_argv = _pinned(
        setup.server_core,
        "-m",
        "bench.baseline",
        f"--kind={model.kind}",
        f"--base={model.base_model}",
        f"--max-length={model.max_length}",
        f"--port={port}",
        f"--threads={setup.torch_threads}",
    )
    baseline = _serve(baseline_argv, f"{url}/health", url, model, setup)
    return {"limit": limit, "gateway": gateway, "baseline": baseline}


def _standin_limit(setup: Setup, *costs: str) -> dict[str, Any]:
    return _in_process_limit(
        _pinned(setup.server_core, "-m", "bench.standin", "limit", f"--batch-size={setup.batch_size}", *costs)
    )


def bench_standin(setup: Setup) -> dict[str, Any]:
    """The stand-in model (bench/standin.py): its in-process limit, then the gateway serving
    it from a model thread (as before model workers) and from a worker process; then, to
    tell the gateway's c=1 cost from the host's, the idle probe against the process-worker
    gateway and the c=1 run on an instant forward."""
    print("== standin: in-process limit", flush=True)
    limit = _standin_limit(setup)
    result: dict[str, Any] = {"limit": limit, "client": setup.client}
    result["cores"] = {"gateway": setup.server_core, "client": setup.client_core, "worker": setup.worker_core}
    runs: list[tuple[str, str, tuple[str, ...], list[Scenario]]] = [
        ("thread", "thread", (), STANDIN_SCENARIOS),
        ("process", "process", (), STANDIN_SCENARIOS),
        ("process_instant", "process", INSTANT_COSTS, [INSTANT_SCENARIO]),
    ]
    for key, workers, costs, scenarios in runs:
        if costs:
            print("== standin: in-process limit, instant forward", flush=True)
            result["instant_limit"] = _standin_limit(setup, *costs)
        print(f"== standin: gateway, {workers} workers {' '.join(costs)}", flush=True)
        port = _free_port()
        config = Path(tempfile.mkdtemp()) / "bench.toml"
        config.write_text(
            config_toml(
                STANDIN,
                port,
                torch_threads=setup.torch_threads,
                batch_size=setup.batch_size,
                batch_tokens=setup.batch_tokens,
                batch_wait_ms=setup.batch_wait_ms,
                workers=workers,
            )
        )
        url = f"http://127.0.0.1:{port}"
        argv = _pinned(setup.server_core, "-m", "bench.standin", "serve", "--config", str(config), *costs)
        placed, worker_core = setup, None
        if workers == "process" and setup.worker_core is not None:
            # Three cores (--cores): gateway, load generator and worker each on its own.
            worker_core = setup.worker_core
        elif workers == "process" and setup.server_core is not None and setup.client_core is not None:
            # Two cores, three processes: the worker gets a core of its own, as the in-process
            # limit had, and the load generator shares the gateway's. (The thread gateway runs
            # the model in its own process: it keeps the server core, the load generator the other.)
            placed, worker_core = dataclasses.replace(setup, client_core=setup.server_core), setup.client_core
        pause = limit["single_12w_ms_p50"] if key == "process" else None
        result[key] = _serve(
            argv,
            f"{url}/ready",
            url,
            STANDIN,
            placed,
            scenarios,
            worker_core=worker_core,
            idle_pause_ms=pause,
        )
    return result


STANDIN_HEADING = "## Stand-in for a GPU-sized model (bench/standin.py)"


def _standin_placement(result: dict[str, Any]) -> str:
    cores = result.get("cores") or {"gateway": "0", "client": "1", "worker": None}
    gateway, client, worker = cores["gateway"], cores["client"], cores["worker"]
    if worker is None:
        return (
            f"Pinning: `thread`: gateway on core {gateway}, load generator on core {client}; `process`: "
            f"the worker process on core {client} alone (as the in-process limit had a core alone), the "
            f"gateway and the load generator on core {gateway}."
        )
    return (
        f"Pinning (`--cores`): gateway on core {gateway}, load generator on core {client}, and the "
        f"`process` gateway's worker on core {worker}: each on a core of its own."
    )


def render_standin(result: dict[str, Any]) -> list[str]:
    limit = result["limit"]["batched_12w"]["inputs_per_s"]
    single = result["limit"]["single_12w_ms_p50"]
    lines = [
        STANDIN_HEADING,
        "",
        "Each forward holds the GIL for 18 ms + 0.75 ms per row in pure Python and sleeps 1 ms; "
        "4096-dimension vectors. `thread`: the model in a thread of the gateway process (as before "
        f"model workers); `process`: in a worker process (the default). {_standin_placement(result)}",
        "",
        f"In-process limit: {limit:.1f} inputs/s (batches of 32); single forward {single:.2f} ms p50. "
        f"Load generator: bench/loadgen.py with its {result.get('client', 'aiohttp')} HTTP client "
        f"(`--client`).",
        "",
        "| workers | scenario | requests | inputs/s | x limit | p50 ms | p99 ms | /health max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workers in ("thread", "process"):
        for scenario, run in result[workers]["runs"].items():
            if "error" in run:
                lines.append(f"| {workers} | {scenario} | failed: {run['error']} | | | | | |")
                continue
            lines.append(
                f"| {workers} | {scenario} | {run['requests']} | {run['inputs_per_s']:.1f} | "
                f"{run['inputs_per_s'] / limit:.2f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | "
                f"{run['health_max_ms']:.1f} |"
            )
    runs = result["process"]["runs"]
    if any("error" in run for run in runs.values()):
        return [*lines, "", "The process-worker gateway failed a scenario: no targets are judged.", ""]
    latency, small, full = (runs[s.name] for s in STANDIN_SCENARIOS)
    thread_full = result["thread"]["runs"].get(STANDIN_SCENARIOS[2].name, {})
    # A forward costs about fixed + per_row x rows (from the single and the 32-row figures).
    # 32 clients that each wait for their answer are served one of two ways. Full 32-row
    # batches: after each, the worker idles while 32 answers go out and 32 new requests come
    # in and are tokenized (r per request): 32 per f(32) + 32 r. Or two groups whose batches
    # alternate, each running while the other's clients come back: 32 rows per
    # 2 x fixed + 32 x per_row, whatever r is. Full batches win only while 32 r < fixed.
    batch_ms = 32 / limit * 1000
    per_row = (batch_ms - single) / 31
    fixed = single - per_row
    cycle = 2 * fixed + 32 * per_row
    alternating = 32 / cycle * 1000
    round_trip = (32 / (0.9 * limit) * 1000 - batch_ms) / 32
    lines += [
        "",
        f"Closed-loop schedules for 32 clients: a forward costs about {fixed:.1f} ms + {per_row:.2f} ms "
        f"per row. 32 clients that each wait for their answer either fill 32-row batches, the "
        f"worker idling after each while the answers go out and 32 new requests arrive and are "
        f"tokenized (r per request), or split into two groups whose batches alternate, 32 rows per "
        f"{cycle:.1f} ms = {alternating:.1f} inputs/s, {alternating / limit:.2f} x the limit. Full "
        f"batches reach 0.9 x the limit only with r under {round_trip:.2f} ms (the HTTP client "
        f"alone costs more), and beat alternating only with r under {fixed / 32:.2f} ms and a "
        f"batch wait of 32 r for company (max_batch_wait_ms is 5). Process workers reach "
        f"{small['inputs_per_s'] / alternating:.2f} of the alternating schedule. With 64 clients two "
        f"32-row batches can both be full, so the worker can run at its limit only if the gateway "
        f"keeps up: process workers {full['inputs_per_s'] / limit:.2f} x, thread workers "
        f"{thread_full.get('inputs_per_s', 0.0) / limit:.2f} x.",
        "",
        "| target (process workers) | measured | verdict |",
        "|---|---|---|",
        f"| small requests (c=32) >= 0.9 x limit | {small['inputs_per_s'] / limit:.2f} x | "
        f"{_verdict(small['inputs_per_s'] >= 0.9 * limit)} |",
        f"| small requests (c=64) >= 0.9 x limit | {full['inputs_per_s'] / limit:.2f} x | "
        f"{_verdict(full['inputs_per_s'] >= 0.9 * limit)} |",
        f"| latency p50 (c=1) <= single forward + 1.5 ms | {latency['p50_ms']:.2f} ms vs {single:.2f} ms "
        f"(+{latency['p50_ms'] - single:.2f}) | {_verdict(latency['p50_ms'] <= single + 1.5)} |",
        "",
        *_idle_lines(result, latency["p50_ms"] - single),
    ]
    return lines


def _idle_lines(result: dict[str, Any], over: float) -> list[str]:
    """How much of the c=1 figure is the host's: the gateway's own c=1 cost on an instant
    forward, and what any round trip costs after the core idled as long as a forward."""
    idle = result["process"].get("idle")
    instant = result.get("process_instant", {}).get("runs", {}).get(INSTANT_SCENARIO.name)
    if not idle or "error" in idle or not instant or "error" in instant:
        return []
    single = result["instant_limit"]["single_12w_ms_p50"]
    return [
        f"What c=1 costs, the gateway's share and the host's. The same process-worker gateway on a "
        f"stand-in whose forward is only its 1 ms sleep and the vectors (`--fixed-ms 0 --row-ms 0`, "
        f"single forward {single:.2f} ms) answers c=1 in {instant['p50_ms']:.2f} ms p50, "
        f"+{instant['p50_ms'] - single:.2f} ms: the gateway's own cost, HTTP client included. With the "
        f"20 ms forward it is +{over:.2f} ms, because the gateway's and the client's core idles through "
        f"each forward and this host runs the same code several times slower after an idle spell: a "
        f"GET /health round trip on that gateway takes {idle['back_to_back_ms_p50']:.2f} ms p50 back "
        f"to back and {idle['after_pause_ms_p50']:.2f} ms after a {idle['pause_ms']:.0f} ms pause "
        f"(bench/idle_probe.py). A c=1 request pays it mostly on what runs after its forward: the "
        f"reply's way through the gateway and the client's read.",
        "",
    ]


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def _versions() -> str:
    names = [
        "torch",
        "transformers",
        "peft",
        "tokenizers",
        "litestar",
        "uvicorn",
        "msgspec",
        "flask",
        "sentence-transformers",
    ]
    parts = [f"python {platform.python_version()}"] + [f"{n} {_version(n)}" for n in names]
    return ", ".join(parts)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def render(results: dict[str, dict[str, Any]], command: str, setup: Setup) -> str:
    if setup.server_core is not None:
        placement = (
            f"servers pinned to core {setup.server_core} with {setup.torch_threads} torch thread(s), "
            f"the load generator to core {setup.client_core}"
        )
    else:
        placement = f"GPU {_device()}, bf16; nothing pinned (16 cores), the load generator beside the server"

    lines = [
        "# Benchmark results",
        "",
        f"Command: `{command}` (written by bench/run_all.py; rerun it to refresh this file).",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {_cpu()}, "
        f"{psutil.cpu_count()} cores; {placement}. Engine: max_batch_size {setup.batch_size}, "
        f"max_batch_tokens {setup.batch_tokens}, max_batch_wait_ms {setup.batch_wait_ms}. "
        f"Load generator: bench/loadgen.py ({setup.client} client, base64 "
        f"responses, every one checked). Versions: {_versions()}.",
        "",
        "Scenarios send unique texts (nothing is deduplicated). The in-process limit is the "
        "backend's own batched forward (batches of 32 pre-tokenized inputs) on the same kind of "
        "texts, in the same pinned setting; the single-input figure includes tokenization. "
        "The baseline is bench/baseline.py: Flask calling `SentenceTransformer.encode()` / "
        "`LLM2Vec.encode()` per request, as the seed did.",
        "",
    ]
    for name, result in results.items():
        if name == STANDIN.name:
            lines += render_standin(result)
            continue
        limit, gateway, baseline = result["limit"], result["gateway"], result["baseline"]
        lines += [
            f"## {name}",
            "",
            "| server | scenario | requests | inputs/s | tokens/s | p50 ms | p99 ms | /health max ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, server in (("gateway", gateway), ("baseline", baseline)):
            for scenario, run in server["runs"].items():
                if "error" in run:
                    lines.append(f"| {label} | {scenario} | failed: {run['error']} | | | | | |")
                    continue
                lines.append(
                    f"| {label} | {scenario} | {run['requests']} | {run['inputs_per_s']:.1f} | "
                    f"{run['tokens_per_s']:.0f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | "
                    f"{run['health_max_ms']:.1f} |"
                )
        if any("error" in run for run in gateway["runs"].values()):
            lines += ["", "The gateway failed a scenario: no targets are judged for this model.", ""]
            continue
        latency, small, bulk = (gateway["runs"][s.name] for s in SCENARIOS)
        base_small = baseline["runs"][SCENARIOS[1].name]
        base_rate = base_small.get("inputs_per_s", float("nan"))
        limit_small = limit["batched_12w"]["inputs_per_s"]
        limit_bulk = limit["batched_60w"]["inputs_per_s"]
        single = limit["single_12w_ms_p50"]
        rss_growth = gateway["rss_peak"] / gateway["rss_after_load"] - 1
        mib = 1024 * 1024
        health = max(r["health_max_ms"] for r in gateway["runs"].values())
        ratio_base = small["inputs_per_s"] / base_rate
        lines += [
            "",
            f"In-process limit: {limit_small:.1f} inputs/s (12 words), {limit_bulk:.1f} inputs/s "
            f"(60 words); single input {single:.2f} ms p50. Gateway RSS after load "
            f"{gateway['rss_after_load'] / mib:.0f} MiB, "
            f"peak under load {gateway['rss_peak'] / mib:.0f} MiB.",
            "",
            "| target | measured | verdict |",
            "|---|---|---|",
            f"| small requests >= 0.9 x limit | {small['inputs_per_s'] / limit_small:.2f} x | "
            f"{_verdict(small['inputs_per_s'] >= 0.9 * limit_small)} |",
            f"| small requests >= 3 x baseline | {ratio_base:.2f} x | {_verdict(ratio_base >= 3)} |",
            f"| bulk >= 0.95 x limit | {bulk['inputs_per_s'] / limit_bulk:.2f} x | "
            f"{_verdict(bulk['inputs_per_s'] >= 0.95 * limit_bulk)} |",
            f"| latency p50 <= single forward + 2 ms | {latency['p50_ms']:.2f} ms vs {single:.2f} ms "
            f"(+{latency['p50_ms'] - single:.2f}) | {_verdict(latency['p50_ms'] <= single + 2)} |",
            f"| peak RSS <= 1.25 x after load | {1 + rss_growth:.2f} x | {_verdict(rss_growth <= 0.25)} |",
            f"| /health under full load < 50 ms | max {health:.1f} ms | {_verdict(health < 50)} |",
            *_batch_rows(gateway.get("batch"), latency),
            "",
            *_cost_lines(small),
        ]
    return "\n".join(lines)


def _cost_lines(small: dict[str, Any]) -> list[str]:
    """What the engine measured during c=32 (`--metrics`), and so whether it held the
    requests queued behind a running batch for that batch's returning clients."""
    costs = small.get("engine_costs")
    if not costs or len(costs) < len(ENGINE_COSTS):
        return []
    fixed, back = costs["fixed_ms"], costs["return_ms"]
    holds = 32 * back <= fixed
    return [
        f"Engine's figures after c=32 (`--metrics`): a forward's fixed cost {fixed:.2f} ms, a request "
        f"back {back:.3f} ms after its batch. With 32 clients, one 32-row forward beats two alternating "
        f"ones iff 32 x {back:.3f} = {32 * back:.1f} ms <= {fixed:.1f} ms, so holding the queued "
        f"requests for the returning ones {'pays' if holds else 'does not pay'} (app/engine/pipelining.py; "
        f"weighed where the worker's forwards leave the gateway's CPU alone, and the wait must fit in "
        f"max_batch_wait_ms).",
        "",
    ]


def _batch_rows(batch: dict[str, Any] | None, alone: dict[str, Any]) -> list[str]:
    """The latency scenario with a batch job running behind it, against the run without."""
    if batch is None:
        return []
    if "error" in batch:
        return [f"| latency with a batch job running | failed: {batch['error']} | MISSED |"]
    during = batch["latency"]
    p50, p99 = during["p50_ms"] / alone["p50_ms"], during["p99_ms"] / alone["p99_ms"]
    note = "" if batch["batch_still_running_at_end_of_latency_run"] else " (the job ended first)"
    return [
        f"| latency p50 with a batch job running <= 1.25 x without | {during['p50_ms']:.2f} ms vs "
        f"{alone['p50_ms']:.2f} ms ({p50:.2f} x; p99 {p99:.2f} x){note} | {_verdict(p50 <= 1.25)} |",
        f"| batch job of {batch['batch_lines']} lines: every custom_id once | "
        f"{batch['batch_lines_per_s']:.1f} lines/s, {batch['batch_lines_done_during_latency_run']} done "
        f"during the latency run | {_verdict(batch['batch_every_custom_id_once'])} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="minilm,llama", help="comma-separated: minilm, llama, llama7b")
    parser.add_argument("--gpu", action="store_true", help="the GPU setup: bf16, no pinning, bigger batches")
    parser.add_argument("--batch-wait-ms", type=float, help="engine.max_batch_wait_ms for the gateway")
    parser.add_argument("--standin", action="store_true", help="only the stand-in model's scenarios")
    parser.add_argument("--no-standin", action="store_true", help="leave out the stand-in model")
    parser.add_argument(
        "--batch-lines", type=int, default=10_000, help="batch job run behind the latency scenario (0: none)"
    )
    parser.add_argument("--no-cuda-graphs", action="store_true", help="LLM2Vec models on CUDA run eagerly")
    parser.add_argument(
        "--client", choices=["aiohttp", "raw"], default="aiohttp", help="the load generator's HTTP client"
    )
    parser.add_argument(
        "--cores",
        help="GATEWAY,CLIENT[,WORKER]: cores of the server, the load generator and the stand-in's worker",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="read the engine's cost figures from /metrics after each scenario",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--work", default=str(ROOT / "bench" / "out"), help="where models and raw results go")
    args = parser.parse_args()
    setup = GPU if args.gpu else CPU
    if args.no_cuda_graphs:
        setup = dataclasses.replace(setup, cuda_graphs=False)
    if args.batch_wait_ms is not None:
        setup = dataclasses.replace(setup, batch_wait_ms=args.batch_wait_ms)
    setup = dataclasses.replace(setup, client=args.client, metrics=args.metrics)
    if args.cores:
        server, client, *worker = args.cores.split(",")
        setup = dataclasses.replace(
            setup, server_core=server, client_core=client, worker_core=worker[0] if worker else None
        )
    work = Path(args.work)
    builders = {
        "minilm": lambda: MINILM,
        "llama": lambda: make_llama_100m(work / "llama-100m"),
        "llama7b": lambda: make_llama_7b_shape(work / "llama-7b-shape"),
    }
    models = [] if args.standin else [builders[name]() for name in args.models.split(",")]
    results = {model.name: bench_model(model, setup, args.batch_lines) for model in models}
    if not args.no_standin and not args.gpu:
        results[STANDIN.name] = bench_standin(setup)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    command = "python -m bench.run_all " + " ".join(sys.argv[1:])
    out = Path(args.out)
    if args.standin and out.exists():
        # Only the stand-in ran: replace its section and keep the models' results as they are.
        kept = out.read_text().split(STANDIN_HEADING)[0].rstrip()
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        section = "\n".join(render_standin(results[STANDIN.name]))
        out.write_text(
            f"{kept}\n\n{section.replace(STANDIN_HEADING, f'{STANDIN_HEADING}, `{command}` at {stamp}')}"
        )
    else:
        out.write_text(render(results, command, setup))
    print(out.read_text())


if __name__ == "__main__":
    main()
