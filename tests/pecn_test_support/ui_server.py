"""Start and stop a real Dagster webserver on the smoke graph, for the browser and GraphQL tests.

    home = prepare_ui_home(smoke_graph.dagster_home, tmp / "dagster_home")
    server = start_webserver(home, {**smoke_graph.env, "DAGSTER_HOME": str(home)}, log_path)
    ...  # http://127.0.0.1:{server.port}
    server.stop()

The webserver (`python -m dagster_webserver -h 127.0.0.1 -p FREE_PORT -w workspace.yaml`) runs in its
own process group (its code server and the runs it launches are in it too); `stop()` ends the whole
group. `start_webserver` returns once the code location(s) of workspace.yaml have loaded, and fails
with the server's log when they do not (crash, load error, timeout).

Why a copy of the smoke graph's DAGSTER_HOME with `DefaultRunCoordinator`: the tests launch runs,
and the shared smoke instance that other tests read must not gain runs. `dagster dev` would use the
`QueuedRunCoordinator` (the default), whose queue only the daemon empties; the default coordinator
launches a run from the webserver at once. So no daemon is needed, and no sensor or schedule starts
runs of its own while a test waits for its run (the automation sensor is on by default). The
instance settings of the repository's dagster.yaml (pools, ...) are kept.

Not a test module (no `test_` prefix); the test files load it by path (`_load_ui_server` there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
DEFAULT_RUN_COORDINATOR = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}

_LOCATIONS_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } }
    ... on PythonError { message } } }
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_ui_home(source: Path, dest: Path) -> Path:
    """Copy a DAGSTER_HOME (SQLite storage, runs, events) and switch it to the default run coordinator."""
    source, dest = Path(source), Path(dest)
    if not (source / "dagster.yaml").is_file():
        raise FileNotFoundError(f"{source} has no dagster.yaml: not a DAGSTER_HOME")
    if dest.exists():
        raise FileExistsError(f"{dest} exists already; pass a new folder")
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.sock", "*.lock"))
    config = yaml.safe_load((dest / "dagster.yaml").read_text()) or {}
    config["run_coordinator"] = DEFAULT_RUN_COORDINATOR
    (dest / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def graphql(url: str, query: str, variables: Optional[dict] = None, timeout: float = 30) -> dict:
    """POST a GraphQL query to the webserver; the `data` of the answer (errors raise)."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors from {url}: {answer['errors']}")
    return answer["data"]


@dataclass
class UiServer:
    """A running webserver: where it listens, its process (group leader), its log and home."""

    host: str
    port: int
    process: subprocess.Popen
    log_path: Path
    dagster_home: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as e:
            return f"(no log: {e})"

    def stop(self, grace_s: float = 15.0) -> None:
        """End the webserver's whole process group (webserver, code server, run workers)."""
        stop_group(self.process, grace_s)


def stop_group(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """End the process group that `process` leads (started with `start_new_session=True`): SIGTERM
    to the group, SIGKILL to what is left after `grace_s`. docs/UI.md documents this way."""
    if process.poll() is None or group_alive(process.pid):
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and group_alive(process.pid):
            process.poll()
            time.sleep(0.2)
        if group_alive(process.pid):
            _signal_group(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start_webserver(dagster_home: Path, env: dict, log_path: Path, port: Optional[int] = None,
                    timeout_s: float = 300.0) -> UiServer:
    """Start `dagster_webserver` on 127.0.0.1 in its own process group; return once its code has loaded.

    env: the variables for the server (e.g. the smoke env); DAGSTER_HOME is set to `dagster_home`.
    """
    port = port or free_port()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **env, "DAGSTER_HOME": str(dagster_home), "OMP_NUM_THREADS": "1",
                 "PYTHONUNBUFFERED": "1",
                 # the repository root, so `pecn_assets` imports even without `pip install -e .`
                 "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
           "-w", str(REPO / "workspace.yaml")]
    with open(log_path, "wb") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        process = subprocess.Popen(cmd, cwd=REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = UiServer("127.0.0.1", port, process, log_path, Path(dagster_home))
    try:
        _wait_until_loaded(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_loaded(server: UiServer, timeout_s: float) -> None:
    t0 = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - t0 < timeout_s:
        if server.process.poll() is not None:
            raise RuntimeError(f"dagster webserver exited with code {server.process.returncode}; "
                               f"log {server.log_path}:\n{server.log_tail()}")
        try:
            data = graphql(server.url, _LOCATIONS_QUERY, timeout=10)["workspaceOrError"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            last = f"not serving yet: {e}"
            time.sleep(1.0)
            continue
        if data["__typename"] != "Workspace":
            raise RuntimeError(f"webserver workspace error: {data.get('message')}")
        entries = data["locationEntries"]
        if not entries:
            raise RuntimeError(f"webserver has no code location; log {server.log_path}:\n{server.log_tail()}")
        for entry in entries:
            location = entry["locationOrLoadError"]
            if location and location["__typename"] == "PythonError":
                raise RuntimeError(f"code location {entry['name']} failed to load:\n{location['message']}")
        loading = [e["name"] for e in entries if e["loadStatus"] != "LOADED" or not e["locationOrLoadError"]]
        if not loading:
            print(f"webserver {server.url} ready in {time.monotonic() - t0:.1f}s")
            return
        last = f"code location(s) {loading} still loading"
        time.sleep(1.0)
    raise TimeoutError(f"dagster webserver not ready after {timeout_s:.0f}s ({last}); "
                       f"log {server.log_path}:\n{server.log_tail()}")


_SHARED: dict[str, UiServer] = {}


def shared_webserver(smoke_graph, tmp_path_factory, pytestconfig) -> UiServer:
    """One webserver per test process on a copy of the smoke graph's home, stopped at session end.

    The browser and GraphQL tests both call this (they share the xdist group `smoke_graph`).
    """
    key = str(smoke_graph.dagster_home)
    server = _SHARED.get(key)
    if server is not None and server.process.poll() is None:
        return server
    home = prepare_ui_home(smoke_graph.dagster_home, tmp_path_factory.mktemp("ui") / "dagster_home")
    server = start_webserver(home, dict(smoke_graph.env), ARTIFACTS / "ui" / "webserver.log")
    _SHARED[key] = server
    pytestconfig.add_cleanup(server.stop)
    return server


TERMINAL_STATUSES = ("SUCCESS", "FAILURE", "CANCELED")


def wait_for_run(instance, run_id: str, timeout_s: float = 300.0, poll_s: float = 1.0):
    """Poll the instance until the run has finished; its final `DagsterRun` (TimeoutError if not)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status.value in TERMINAL_STATUSES:
            return run
        time.sleep(poll_s)
    run = instance.get_run_by_id(run_id)
    raise TimeoutError(f"run {run_id} still {run.status.value if run else 'unknown'} after {timeout_s:.0f}s")


def wait_for_new_run(instance, known: set, timeout_s: float = 120.0, poll_s: float = 0.5):
    """The first run in the instance whose id is not in `known` (waits until one appears)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        fresh = [r for r in instance.get_runs(limit=10) if r.run_id not in known]
        if fresh:
            return fresh[-1]
        time.sleep(poll_s)
    raise TimeoutError(f"no new run appeared in {timeout_s:.0f}s")


def run_failure_report(instance, run_id: str, server: Optional[UiServer] = None) -> str:
    """The error messages of a run's events (and the server log tail), for assertion messages."""
    lines = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE", "ENGINE_EVENT"):
            data = getattr(event.event_specific_data, "error", None)
            lines.append(f"{event.event_type_value}: {event.message or ''} {data.message if data else ''}")
    if server is not None:
        lines.append("--- webserver log ---\n" + server.log_tail(2000))
    return "\n".join(lines)[-6000:]
