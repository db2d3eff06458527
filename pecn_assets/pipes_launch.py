"""Training in a launched process, the Dagster side: the command (K ranks), the environment, the Pipes
session, and a failure's stderr tail (the child: `pipes_child.py`)."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import dagster as dg

from pecn_ml.utils.accel import launch_command
from pecn_ml.utils.codec import to_json
from pecn_ml.utils.failures import NOT_RETRIED_MARKER
from pecn_ml.utils.files import owned_tmp_dir
from pecn_ml.utils.gpu_devices import DeviceClaim
from pecn_ml.utils.processes import start_ticks

CHILD_MODULE = "pecn_assets.pipes_child"
STDERR_TAIL_LINES = 60


def child_command(trainer: str, job_json: str, num_processes: int = 1, *, cpu: bool = False,
                  python: str = sys.executable, port: Optional[int] = None, module: str = CHILD_MODULE) -> list[str]:
    """The command line of a training child with `num_processes` ranks (`accel.launch_command`)."""
    return launch_command(["-m", module, trainer, "--config", job_json], num_processes, cpu=cpu,
                          python=python, port=port)


def child_env(claim_env: Mapping[str, str], *, cpu: bool = False,
              threads_per_process: Optional[int] = None) -> dict[str, str]:
    """Environment on top of the step's: the claim's CUDA_VISIBLE_DEVICES, the CPU switch, OMP threads."""
    env = dict(claim_env)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    if threads_per_process is not None:
        env["OMP_NUM_THREADS"] = str(threads_per_process)
    return env


def for_this_launch(job: Any) -> Any:
    """The job with a fresh `launch_id` (names the rank records) and this step as the launcher
    (its pid and start: the child dies with it)."""
    pid = os.getpid()
    return replace(job, options=replace(job.options, launch_id=uuid.uuid4().hex[:12], launcher_pid=pid,
                                        launcher_start=start_ticks(pid)))


class CompleteLineMessageReader(dg.PipesFileMessageReader):
    """Dagster's file reader, but a line is parsed only once it is complete: Dagster's hands a
    half-written line to `json.loads`, its thread dies, and every later message is lost."""

    def _reader_thread(self, handler: Any, is_resource_complete: threading.Event) -> None:  # Dagster's, replaced
        partial = ""
        try:
            with open(self._path, encoding="utf-8") as f:
                while True:
                    finished = is_resource_complete.is_set()  # read before the last pass: nothing is written after
                    chunk = f.readline()
                    if chunk:
                        partial += chunk
                        if partial.endswith("\n"):
                            handler.handle_message(json.loads(partial))
                            partial = ""
                    elif finished:
                        break
                    else:
                        time.sleep(0.01)
            if partial.strip():
                raise ValueError(f"incomplete Pipes message at the end of {self._path}: {partial[:200]!r}")
        except Exception:
            handler.report_pipes_framework_exception(f"{type(self).__name__} reader thread", sys.exc_info())
            raise


def scratch_root() -> Path:
    """The scratch folders of launches are `.{name}.tmp-*` beside this path (in $TMPDIR)."""
    return Path(tempfile.gettempdir()) / "pecn-pipes"


def _pump(stream, tail: collections.deque, not_retried: list) -> None:
    """Copy the child's stderr to ours (the step's compute log), keeping a tail and the lines that
    say a retry cannot fix the failure."""
    sink = getattr(sys.stderr, "buffer", None)
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        if sink is not None:
            sink.write(raw)
        else:
            sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(line.rstrip("\n"))
        if NOT_RETRIED_MARKER in line:
            not_retried.append(line.strip())
    stream.close()


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_pipes_command(context: dg.AssetExecutionContext, command: Sequence[str], *,
                      env: Optional[Mapping[str, str]] = None, pass_fds: Sequence[int] = (),
                      metadata: Optional[Mapping[str, Any]] = None, scratch: Optional[Path] = None,
                      on_start: Optional[Callable[[int], None]] = None, termination_grace_s: float = 30.0
                      ) -> dg.PipesClientCompletedInvocation:
    """Run `command` as a Pipes child of this step and return its results; context and message
    files in `scratch` (default: a scratch folder of its own), `on_start(pid)` once it runs.
    A failed child raises `dg.Failure` with its exit code and stderr tail, not retried when the
    child announced a failure a retry cannot fix. `metadata` is added to every result."""
    if scratch is None:
        with owned_tmp_dir(scratch_root()) as own:
            return run_pipes_command(context, command, env=env, pass_fds=pass_fds, metadata=metadata, scratch=own,
                                     on_start=on_start, termination_grace_s=termination_grace_s)
    tail: collections.deque = collections.deque(maxlen=STDERR_TAIL_LINES)
    not_retried: list[str] = []
    with dg.open_pipes_session(context=context,
                               context_injector=dg.PipesFileContextInjector(str(Path(scratch) / "context.json")),
                               message_reader=CompleteLineMessageReader(str(Path(scratch) / "messages.jsonl"))
                               ) as session:
        process = subprocess.Popen(
            list(command), stderr=subprocess.PIPE, pass_fds=tuple(pass_fds),
            env={**os.environ, **(env or {}), **session.get_bootstrap_env_vars()})
        pump = threading.Thread(target=_pump, args=(process.stderr, tail, not_retried), daemon=True)
        pump.start()
        try:
            if on_start is not None:
                on_start(process.pid)
            code = process.wait()
        except BaseException:  # interrupted (run terminated): stop the child, then re-raise
            context.log.info("[pipes] step interrupted: stopping the training child")
            _stop(process, termination_grace_s)
            raise
        finally:
            pump.join(timeout=10)
        if code != 0:
            text = "\n".join(tail)
            why = f" ({not_retried[-1]}: not retried)" if not_retried else ""
            raise dg.Failure(
                description=f"training child failed with exit code {code}{why}; last stderr lines:\n{text}",
                metadata={"exit_code": code, "stderr_tail": dg.MetadataValue.md(f"```\n{text}\n```"),
                          "command": " ".join(command[:8]) + (" ..." if len(command) > 8 else "")},
                allow_retries=not not_retried)
    return dg.PipesClientCompletedInvocation(session, metadata=metadata)


def run_training(context: dg.AssetExecutionContext, trainer: str, job: Any, *,
                 num_processes: int = 1, claim: Any = None, cpu: Optional[bool] = None,
                 threads_per_process: Optional[int] = None, module: str = CHILD_MODULE) -> dg.MaterializeResult:
    """Train `job` in a child (`module`) with `num_processes` ranks on the devices of `claim` (a
    `DeviceClaim`, or None) and return its materialisation, the claim's `gpu_devices` added.
    `cpu` (K > 1 over gloo) defaults to: no devices claimed, or no CUDA here (simulated devices)."""
    metadata = claim.metadata() if claim is not None else {"gpu_devices": []}
    claim = claim or DeviceClaim(devices=())   # no devices, no lock files to hand over
    devices = tuple(claim.devices)
    if cpu is None:
        import torch

        cpu = not devices or not torch.cuda.is_available()
    if devices and num_processes > len(devices):
        raise dg.Failure(f"{num_processes} training processes need as many GPUs; the claim holds "
                         f"{len(devices)} ({','.join(devices)})", allow_retries=False)
    job = for_this_launch(job)
    if threads_per_process is None and num_processes > 1 and cpu:  # the machine's cores shared out
        threads_per_process = max(1, (os.cpu_count() or 1) // num_processes)
    env = child_env(claim.env(), cpu=cpu, threads_per_process=threads_per_process)
    context.log.info(f"launching {trainer} training: {num_processes} process(es), "
                     f"devices {','.join(devices) or 'none (CPU)'}")
    with owned_tmp_dir(scratch_root()) as scratch:
        # the job goes by file: its progress estimates alone can exceed the kernel's 128 KiB per argument
        job_file = scratch / "job.json"
        job_file.write_text(to_json(job), encoding="utf-8")
        command = child_command(trainer, f"@{job_file}", num_processes, cpu=cpu, module=module)
        try:
            invocation = run_pipes_command(context, command, env=env, scratch=scratch, pass_fds=claim.fds,
                                           on_start=claim.hand_to, metadata=metadata)
        finally:
            claim.hand_to(os.getpid())  # the child is gone: the claimant holds the devices again
    return invocation.get_materialize_result()


def child_result(result: dg.MaterializeResult) -> tuple[Any, dict[str, Any]]:
    """(the artifact handle the child reported, checked by sha; the rest of its metadata, plain values)."""
    from pecn_ml.artifacts import artifact_from_json

    meta = {k: getattr(v, "value", v) for k, v in (result.metadata or {}).items()}
    if "artifact" not in meta:
        raise dg.Failure(f"the training child reported no artifact (metadata: {sorted(meta)})")
    return artifact_from_json(meta.pop("artifact")).verify(), meta
