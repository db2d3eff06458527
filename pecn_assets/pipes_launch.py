"""Training in a launched process: the Dagster side (command, environment, Pipes session).

A GPU asset claims its devices (`pecn_ml.utils.gpu_devices.claim_devices`), builds the job
(`pecn_assets.pipes_child.Pix2PixJob` / `PacNetJob`) and calls `run_training`:

- K == 1: `python -m pecn_assets.pipes_child TRAINER --config JSON`;
- K > 1 on GPUs: `accelerate launch --multi_gpu --num_processes K --main_process_port P -m ...`;
- K > 1 on the CPU (tests, CI): `torchrun --standalone --nproc_per_node K -m ...` with
  `ACCELERATE_USE_CPU=true`, so accelerate's processes talk through gloo (`accelerate launch --cpu`
  starts a single process unless MPI is installed).

`run_training` is `PipesSubprocessClient.run` plus what training needs: the child inherits the
device locks (`pass_fds`) and is named in them as their holder, so a claim outlives a killed step
process until the child exits too; the child dies with the step (it is told the step's pid and
start time, see `pipes_child`), so that is seconds. A failed child fails the step with the tail of
its stderr in the error, without a retry when it announced a failure no retry can fix (a full
disk, a failed verification: `pecn_ml.utils.failures`); an interrupted step sends SIGINT to the
child, then SIGKILL after a grace period.

The job file, the Pipes context and the message file live in a scratch folder of the step
process, `$TMPDIR/.pecn-pipes.tmp-{host}-{pid}-{start}-*`, removed when the launch ends; one left
by a killed step is removed by the next launch on the machine (`pecn_ml.utils.files.owned_tmp_dir`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import dagster as dg

from pecn_assets.pipes_child import LAUNCHER_PID_ENV, LAUNCHER_START_ENV, job_to_json
from pecn_ml.utils.failures import NOT_RETRIED_MARKER
from pecn_ml.utils.accel import launch_command
from pecn_ml.utils.files import owned_tmp_dir
from pecn_ml.utils.processes import start_ticks

CHILD_MODULE = "pecn_assets.pipes_child"
STDERR_TAIL_LINES = 60


def child_command(trainer: str, job_json: str, num_processes: int = 1, *, cpu: bool = False,
                  python: str = sys.executable, port: Optional[int] = None) -> list[str]:
    """The command line of a training child with `num_processes` ranks
    (`pecn_ml.utils.accel.launch_command`)."""
    return launch_command(["-m", CHILD_MODULE, trainer, "--config", job_json], num_processes, cpu=cpu,
                          python=python, port=port)


def child_env(claim_env: Mapping[str, str], num_processes: int = 1, *, cpu: bool = False,
              threads_per_process: Optional[int] = None) -> dict[str, str]:
    """Environment on top of the step's: the claim's CUDA_VISIBLE_DEVICES, the CPU switch for
    K > 1 without GPUs, and OMP threads per rank."""
    env = dict(claim_env)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    if threads_per_process is not None:
        env["OMP_NUM_THREADS"] = str(threads_per_process)
    return env


def with_launch_id(job: Any) -> Any:
    """The job with a fresh `launch_id` in its options (names this launch's rank records)."""
    return replace(job, options={**job.options, "launch_id": uuid.uuid4().hex[:12]})


class CompleteLineMessageReader(dg.PipesMessageReader):
    """Pipes messages through a temp file, like `dg.PipesTempFileMessageReader`, but a line is
    parsed only once it is complete.

    Dagster's file reader hands every `readline()` to `json.loads`; a reader that catches the
    child in the middle of writing a long message (our materialisation carries the artifact, the
    loss curve and the ranks) gets half a line, its thread dies (JSONDecodeError, seen in the
    test suite), and every later message, the materialisation included, is lost. Here partial
    lines wait for their newline; after the child is gone the rest of the file is read."""

    FILE = "messages.jsonl"

    def __init__(self, folder: Optional[str | os.PathLike] = None):
        self.folder = folder  # where the message file goes (None: a temp folder of its own)

    @contextmanager
    def read_messages(self, handler: Any) -> Iterator[dict]:
        from dagster_pipes import PipesDefaultMessageWriter

        with tempfile.TemporaryDirectory() if self.folder is None else contextlib.nullcontext(self.folder) as tmp:
            path = os.path.join(tmp, self.FILE)
            open(path, "w", encoding="utf-8").close()
            done = threading.Event()
            thread = threading.Thread(target=self._read, args=(path, handler, done), daemon=True)
            thread.start()
            try:
                yield {PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                       PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False}
            finally:
                done.set()
                thread.join()

    @staticmethod
    def _read(path: str, handler: Any, done: threading.Event) -> None:
        partial = ""
        try:
            with open(path, encoding="utf-8") as f:
                while True:
                    finished = done.is_set()  # read before the last pass: nothing is written after
                    chunk = f.readline()
                    if chunk:
                        partial += chunk
                        if partial.endswith("\n"):
                            handler.handle_message(json.loads(partial))
                            partial = ""
                        continue
                    if finished:
                        break
                    time.sleep(0.01)
            if partial.strip():
                raise ValueError(f"incomplete Pipes message at the end of {path}: {partial[:200]!r}")
        except Exception:
            handler.report_pipes_framework_exception(f"{CompleteLineMessageReader.__name__} reader thread",
                                                     sys.exc_info())
            raise

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a temp file (CompleteLineMessageReader)."


def scratch_root() -> Path:
    """The scratch folders of launches are `.{name}.tmp-*` beside this path (in $TMPDIR)."""
    return Path(tempfile.gettempdir()) / "pecn-pipes"


def _pump(stream, tail: collections.deque, not_retried: list) -> None:
    """Copy the child's stderr to ours line by line (the step's compute log), keeping a tail and
    the lines that say the failure cannot be fixed by a retry."""
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
                      cwd: Optional[str] = None, termination_grace_s: float = 30.0,
                      extras: Optional[Mapping[str, Any]] = None,
                      metadata: Optional[Mapping[str, Any]] = None,
                      scratch: Optional[Path] = None,
                      on_start: Optional[Callable[[int], None]] = None
                      ) -> dg.PipesClientCompletedInvocation:
    """Run `command` as a Pipes child of this step and return its results.

    The child is told this process's pid and start time (it dies with it); its context and
    message files go to `scratch` (default: a scratch folder of this launch). `on_start(pid)` is
    called once it runs. Raises `dg.Failure` with the exit code and the last `STDERR_TAIL_LINES`
    lines of stderr when the child fails (metadata `stderr_tail`, `exit_code`), not retried when
    the child announced a failure a retry cannot fix. `metadata` is added to every result."""
    if scratch is None:
        with owned_tmp_dir(scratch_root()) as own:
            return run_pipes_command(context, command, env=env, pass_fds=pass_fds, cwd=cwd,
                                     termination_grace_s=termination_grace_s, extras=extras,
                                     metadata=metadata, scratch=own, on_start=on_start)
    tail: collections.deque = collections.deque(maxlen=STDERR_TAIL_LINES)
    not_retried: list[str] = []
    launcher = {LAUNCHER_PID_ENV: str(os.getpid()), LAUNCHER_START_ENV: start_ticks(os.getpid())}
    with dg.open_pipes_session(context=context,
                               context_injector=dg.PipesFileContextInjector(str(Path(scratch) / "context.json")),
                               message_reader=CompleteLineMessageReader(scratch),
                               extras=dict(extras or {})) as session:
        process = subprocess.Popen(
            list(command), cwd=cwd, stderr=subprocess.PIPE, pass_fds=tuple(pass_fds),
            env={**os.environ, **(env or {}), **launcher, **session.get_bootstrap_env_vars()})
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
                 threads_per_process: Optional[int] = None) -> dg.MaterializeResult:
    """Train `job` in a child with `num_processes` ranks on the devices of `claim`
    (a `DeviceClaim`, or None: no GPU claim) and return the child's materialisation, with the
    claim's `gpu_devices` added to the child's metadata (which has `num_processes`, `ranks`).

    `cpu` (K > 1 over gloo) defaults to: no devices claimed, or no CUDA here (simulated devices)."""
    devices = tuple(claim.devices) if claim is not None else ()
    if cpu is None:
        import torch

        cpu = not devices or not torch.cuda.is_available()
    if devices and num_processes > len(devices):
        raise dg.Failure(f"{num_processes} training processes need as many GPUs; the claim holds "
                         f"{len(devices)} ({','.join(devices)})", allow_retries=False)
    job = with_launch_id(job)
    if threads_per_process is None:
        threads_per_process = threads_per_rank(num_processes, cpu)
    env = child_env(claim.env() if claim is not None else {}, num_processes, cpu=cpu,
                    threads_per_process=threads_per_process)
    context.log.info(f"launching {trainer} training: {num_processes} process(es), "
                     f"devices {','.join(devices) or 'none (CPU)'}")
    with owned_tmp_dir(scratch_root()) as scratch:
        # the job goes by file: its progress estimates alone can exceed the kernel's 128 KiB per argument
        job_file = scratch / "job.json"
        job_file.write_text(job_to_json(job), encoding="utf-8")
        command = child_command(trainer, f"@{job_file}", num_processes, cpu=cpu)
        try:
            invocation = run_pipes_command(context, command, env=env, scratch=scratch,
                                           pass_fds=claim.fds if claim is not None else (),
                                           on_start=claim.hand_to if claim is not None else None,
                                           metadata=claim.metadata() if claim is not None else {"gpu_devices": []})
        finally:
            if claim is not None:
                claim.hand_to(os.getpid())  # the child is gone: the claimant holds the devices again
    return invocation.get_materialize_result()


def child_result(result: dg.MaterializeResult) -> tuple[Any, dict[str, Any]]:
    """(the artifact handle the child reported, checked by sha; the rest of its metadata as plain
    Python values)."""
    from pecn_ml.artifacts import artifact_from_json

    meta = {k: getattr(v, "value", v) for k, v in (result.metadata or {}).items()}
    if "artifact" not in meta:
        raise dg.Failure(f"the training child reported no artifact (metadata: {sorted(meta)})")
    return artifact_from_json(meta.pop("artifact")).verify(), meta


def threads_per_rank(num_processes: int, cpu: bool) -> Optional[int]:
    """OMP threads of each rank of a K > 1 launch on the CPU (the cores shared out); None: inherit."""
    if num_processes <= 1 or not cpu:
        return None
    return max(1, (os.cpu_count() or 1) // num_processes)


def add_metadata(result: dg.MaterializeResult, extra: Mapping[str, Any]) -> dg.MaterializeResult:
    """`result` with more metadata (e.g. the asset's own lineage and images)."""
    return dg.MaterializeResult(asset_key=result.asset_key,
                                metadata={**(result.metadata or {}), **extra},
                                check_results=result.check_results,
                                data_version=result.data_version, tags=result.tags)
