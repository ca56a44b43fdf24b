"""The worker: ``python -m corral.worker SUBMISSION_DIR`` runs the tasks of one submission.

For each task it appends to ``started.log``, honours ``skip_if``, runs the command or function
(with its timeout), checks ``verify``, and writes ``results/<task key>.json`` atomically. SIGTERM,
SIGINT and SIGUSR1 stop the current task, which is reported as interrupted (its attempt is kept).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from corral.paths import TemplatePathError, inside
from corral.refs import single_callable
from corral.states import ErrorClass, Outcome
from corral.templates import fill
from corral.worker import protocol
from corral.worker.context import LazyLog, TaskContext

HOST = socket.gethostname()


@dataclass
class WorkerStage:
    """The parts of a validated stage a worker needs (plain data: the worker stays light to start)."""

    call: str | None
    run: list[str] | None
    timeout: float | None
    env: dict[str, str]
    skip_if: list[str] | None
    verify: list[str] | None
    outputs: list[str]
    verify_command: list[str] | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "WorkerStage":
        verify = spec.get("verify")
        command = verify.get("run") if isinstance(verify, dict) else None
        return cls(call=spec.get("call"), run=spec.get("run"), timeout=spec.get("timeout"),
                   env=spec.get("env") or {}, skip_if=spec.get("skip_if"),
                   verify=None if command else verify, outputs=spec.get("outputs") or [], verify_command=command)

    @property
    def skip_callable(self) -> str | None:
        return single_callable(self.skip_if)

    @property
    def verify_callable(self) -> str | None:
        return single_callable(self.verify)



#: the result of a task that ``skip_if`` found done
SKIPPED_RESULT = {"skipped": True}


class Interrupted(BaseException):
    """The worker was asked to stop (a signal): the task runs again later, attempt kept."""


class TaskTimeout(BaseException):
    """The task ran past the stage's timeout."""


class VerifyFailed(Exception):
    pass


class Worker:
    def __init__(self, folder: Path, element: int | None = None):
        self.manifest = protocol.read_manifest(folder)
        self.element = element
        if element is not None:
            # One element of a job array: its slice of the tasks, its own files in e<element>/.
            start, end = self.manifest["elements"][element]
            self.manifest["tasks"] = self.manifest["tasks"][start:end]
            folder = protocol.element_dir(folder, element)
            folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.stage = WorkerStage.from_spec(self.manifest["stage_spec"])
        self.stage_name: str = self.manifest["stage"]
        self.run_id: str = self.manifest["run_id"]
        self.root = Path(self.manifest["root"])
        self.run_dir = Path(self.manifest["run_dir"])
        self.gpus: list[int] = list(self.manifest.get("gpus") or [])
        self.stop_requested = False
        self.in_task = False
        self._functions: dict[str, Callable[..., Any]] = {}
        self._started = open(folder / protocol.STARTED, "a", buffering=1)  # noqa: SIM115
        self._results = protocol.ResultWriter(folder)
        self._log_dir = str(protocol.log_path(self.run_dir, self.stage_name, "x", 0).parent)
        if str(self.root) not in sys.path:
            sys.path.insert(0, str(self.root))

    # -- signals -----------------------------------------------------------------

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._on_stop)

    def _on_stop(self, signum, _frame) -> None:
        self.stop_requested = True
        if self.in_task:
            raise Interrupted(signal.Signals(signum).name)

    # -- main loop -----------------------------------------------------------------

    def run(self) -> int:
        protocol.write_json_atomic(self.folder / protocol.WORKER_INFO,
                                   {"pid": os.getpid(), "host": HOST, "started_at": time.time()})
        if not self._claim():
            return 0
        tasks = self.manifest["tasks"]
        mode = self.manifest.get("mode", "item")
        # A requeued job runs again in the same folder: what finished is kept, what was interrupted runs again.
        previous = protocol.read_results(self.folder)[0]
        done = {int(r["task_id"]) for r in previous if r.get("status") != Outcome.INTERRUPTED}
        if mode == "item":
            for task in tasks:
                if self.stop_requested:
                    break
                if task["task_id"] in done:
                    continue
                self._write(task, self.run_task(task))
        else:
            todo = [t for t in tasks if t["task_id"] not in done]
            if todo and not self.stop_requested:
                outcomes = self.run_group(todo, mode)
                for task, outcome in zip(todo, outcomes):
                    self._write(task, outcome)
        status = "interrupted" if self.stop_requested else "ok"
        protocol.write_json_atomic(self.folder / protocol.EXIT, {"status": status, "at": time.time()})
        if self.element is None:
            return 0
        # A cluster reads the exit status: dependents (afterok) must not start unless all went well.
        final: dict[int, str] = {}
        for record in protocol.read_results(self.folder)[0]:
            final[int(record["task_id"])] = record.get("status", Outcome.FAILED)
        if self.stop_requested or any(v == Outcome.INTERRUPTED for v in final.values()):
            return 3
        return 0 if all(v in (Outcome.DONE, Outcome.SKIPPED) for v in final.values()) else 1

    def _claim(self) -> bool:
        """The same work sent to several queues (a race): the first job to start takes each element;
        a later one leaves it alone (its job is being cancelled)."""
        if self.element is None or not os.environ.get("CORRAL_RACE"):
            return True
        me = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or str(os.getpid())
        path = self.folder / "claim"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return path.read_text().strip() == me
        os.write(fd, me.encode())
        os.close(fd)
        return True

    def _write(self, task: dict[str, Any], outcome: dict[str, Any]) -> None:
        outcome.update(task_id=task["task_id"], attempt=task["attempt"], host=HOST)
        self._results.write(outcome)

    def _mark_started(self, task: dict[str, Any], at: float) -> None:
        self._started.write(f"{task['task_id']} {at:.6f}\n")

    def _context(self, task: dict[str, Any], log: LazyLog, items=None) -> TaskContext:
        return TaskContext(run_id=self.run_id, stage=self.stage_name, task_id=task["task_id"],
                           task_key=task["key"], attempt=task["attempt"], item_key=task["item_key"],
                           item_id=task["item_id"], run_dir=self.run_dir, root=self.root, gpus=self.gpus,
                           log_stream=log, ledger_url=self.manifest.get("ledger_url"), items=items,
                           params=self.manifest.get("params") or {})

    def _fields(self, task: dict[str, Any]) -> dict[str, Any]:
        fields = dict(task["params"])
        fields.update(run_id=self.run_id, stage=self.stage_name, attempt=task["attempt"], task_id=task["task_id"],
                      item_id=task["item_id"], item_key=task["item_key"], root=str(self.root))
        return fields

    # -- one task ------------------------------------------------------------------------

    def run_task(self, task: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        self._mark_started(task, started)
        log = LazyLog(Path(f"{self._log_dir}/{task['key']}.{task['attempt']}.log"))
        outcome: dict[str, Any] = {"started_at": started}
        try:
            self.in_task = True
            if self.stop_requested:
                raise Interrupted("stop requested")
            self._check_paths(task)
            if self._skip(task, log):
                outcome.update(status=Outcome.SKIPPED, result=dict(SKIPPED_RESULT))
            else:
                result = self._execute(task, log)
                self._verify(task, result, log)
                outcome.update(status=Outcome.DONE, result=result)
        except Interrupted as exc:
            outcome.update(status=Outcome.INTERRUPTED, error_class=ErrorClass.INTERRUPTED, error_message=f"stopped by {exc}")
        except TaskTimeout:
            outcome.update(status=Outcome.FAILED, error_class=ErrorClass.TIMEOUT,
                           error_message=f"ran past the timeout of {self.stage.timeout:g}s")
        except VerifyFailed as exc:
            outcome.update(status=Outcome.FAILED, error_class=ErrorClass.VERIFY, error_message=str(exc))
        except CommandFailed as exc:
            outcome.update(status=Outcome.FAILED, error_class=exc.error_class, error_message=str(exc))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the task's own failure, with its class
            log.write(traceback.format_exc())
            outcome.update(status=Outcome.FAILED, error_class=type(exc).__name__, error_message=_short(exc))
        finally:
            self.in_task = False
            self._cancel_alarm()
            log.close()
        outcome["finished_at"] = time.time()
        return outcome

    def _execute(self, task: dict[str, Any], log: LazyLog) -> Any:
        if self.stage.call:
            function = self._function(self.stage.call)
            ctx = self._context(task, log)
            self._set_alarm()
            with _redirect_output(log):
                result = function(dict(task["params"]), ctx)
            self._cancel_alarm()
            return _result_value(result)
        return self._run_command(task, log)

    def _run_command(self, task: dict[str, Any], log: LazyLog, extra_env: dict[str, str] | None = None) -> Any:
        fields = self._fields(task)
        try:
            argv = [fill(part, fields) for part in self.stage.run or []]
        except (KeyError, IndexError, ValueError) as exc:
            raise CommandFailed(ErrorClass.TEMPLATE, f"cannot fill the command template: {exc!r}") from None
        result_file = self.folder / "out" / f"{task['key']}.json"
        result_file.parent.mkdir(exist_ok=True)
        if result_file.exists():
            result_file.unlink()
        env = dict(os.environ)
        env.update({k: fill(v, fields) for k, v in self.stage.env.items()})
        env.update(extra_env or {})
        env.update(CORRAL_RESULT=str(result_file), CORRAL_RUN_ID=self.run_id, CORRAL_STAGE=self.stage_name,
                   CORRAL_TASK_ID=str(task["task_id"]), CORRAL_ATTEMPT=str(task["attempt"]),
                   CORRAL_ITEM=json.dumps(task["params"]), CORRAL_ITEM_KEY=task["item_key"],
                   CORRAL_CHECKPOINT_DIR=str(self.run_dir / "checkpoints" / self.stage_name / task["item_id"]))
        log_file = protocol.log_path(self.run_dir, self.stage_name, task["key"], task["attempt"])
        log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            code = self._run_logged(argv, env, log_file)
        except OSError as exc:
            raise CommandFailed(ErrorClass.EXIT_CODE, f"cannot start {argv[0]!r}: {exc.strerror}") from None
        if code != 0:
            tail = _tail(log_file)
            if code < 0:
                name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
                cls = ErrorClass.OOM if -code == signal.SIGKILL else ErrorClass.SIGNAL
                raise CommandFailed(cls, f"killed by {name}{tail}")
            raise CommandFailed(ErrorClass.EXIT_CODE, f"exit code {code}{tail}")
        if result_file.exists():
            try:
                return json.loads(result_file.read_text())
            except ValueError as exc:
                raise CommandFailed("parse", f"$CORRAL_RESULT is not JSON: {exc}") from None
        return None

    def _skip(self, task: dict[str, Any], log: LazyLog) -> bool:
        """Whether ``skip_if`` matches and what is already there passes ``verify`` (a truncated
        output runs again)."""
        if not self.stage.skip_if:
            return False
        callable_ref = self.stage.skip_callable
        if callable_ref:
            matched = bool(self._function(callable_ref)(dict(task["params"]), self._context(task, log)))
        else:
            fields = self._fields(task)
            matched = all(self._path("skip_if", p, fields, task).exists() for p in self.stage.skip_if)
        if not matched:
            return False
        try:
            self._verify(task, dict(SKIPPED_RESULT), log)
        except VerifyFailed as exc:
            log.write(f"skip_if matched, but what is there fails verify ({exc}): running the task\n")
            return False
        return True

    def _path(self, key: str, template: str, fields: dict[str, Any], task: dict[str, Any]) -> Path:
        try:
            return inside(self.root, fill(template, fields), key=key, item=task["item_key"])
        except TemplatePathError as exc:
            raise CommandFailed(ErrorClass.TEMPLATE, str(exc)) from None
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise CommandFailed(ErrorClass.TEMPLATE, f"{key}: cannot fill {template!r}: {exc!r}") from None

    def _check_paths(self, task: dict[str, Any]) -> None:
        """Every path template of the stage, filled for this task, stays in the campaign folder:
        checked before the task runs, so a bad item fails at once and runs nothing."""
        fields = self._fields(task)
        path_lists = [("outputs", self.stage.outputs)]
        if self.stage.skip_if and not self.stage.skip_callable:
            path_lists.append(("skip_if", self.stage.skip_if))
        if isinstance(self.stage.verify, list) and not self.stage.verify_callable:
            path_lists.append(("verify", self.stage.verify))
        for key, templates in path_lists:
            for template in templates or []:
                self._path(key, template, fields, task)

    def _verify(self, task: dict[str, Any], result: Any, log: LazyLog) -> None:
        fields = self._fields(task)
        missing = [fill(p, fields) for p in self.stage.outputs if not self._path("outputs", p, fields, task).exists()]
        if missing:
            raise VerifyFailed(f"expected outputs are missing: {', '.join(missing)}")
        if self.stage.verify_command:
            self._run_verify_command(task, fields)
            return
        if not self.stage.verify:
            return
        callable_ref = self.stage.verify_callable
        if callable_ref:
            verdict = self._function(callable_ref)(dict(task["params"]), result, self._context(task, log))
            if verdict is False or isinstance(verdict, str):
                raise VerifyFailed(verdict if isinstance(verdict, str) else f"{callable_ref} returned False")
            return
        missing = [fill(p, fields) for p in self.stage.verify if not self._path("verify", p, fields, task).exists()]
        if missing:
            raise VerifyFailed(f"verify: missing {', '.join(missing)}")

    def _run_verify_command(self, task: dict[str, Any], fields: dict[str, Any]) -> None:
        """The verify command runs in the campaign folder, its output in the task's log; a non-zero
        exit fails the task (class ``verify``)."""
        try:
            argv = [fill(part, fields) for part in self.stage.verify_command or []]
        except (KeyError, IndexError, ValueError) as exc:
            raise CommandFailed(ErrorClass.TEMPLATE, f"cannot fill the verify command: {exc!r}") from None
        log_file = protocol.log_path(self.run_dir, self.stage_name, task["key"], task["attempt"])
        log_file.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CORRAL_ITEM=json.dumps(task["params"]), CORRAL_ITEM_KEY=task["item_key"],
                   CORRAL_RUN_ID=self.run_id, CORRAL_STAGE=self.stage_name, CORRAL_ATTEMPT=str(task["attempt"]))
        try:
            code = self._run_logged(argv, env, log_file, header=f"verify: {' '.join(argv)}\n")
        except OSError as exc:
            raise VerifyFailed(f"cannot start the verify command {argv[0]!r}: {exc.strerror}") from None
        if code != 0:
            raise VerifyFailed(f"verify command {' '.join(argv)!r} exited {code}{_tail(log_file)}")

    def _run_logged(self, argv: list[str], env: dict[str, str], log_file: Path, header: str = "") -> int:
        """Run a command in the campaign folder with its output appended to the task's log, within the
        stage's timeout; returns its exit code (OSError when it cannot start)."""
        with open(log_file, "ab") as out:
            if header:
                out.write(header.encode())
                out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=env,
                                    start_new_session=True)
            try:
                return proc.wait(timeout=self.stage.timeout)
            except subprocess.TimeoutExpired:
                _terminate(proc)
                raise TaskTimeout() from None
            except Interrupted:
                _terminate(proc)
                raise

    # -- batches and once-per-run stages ------------------------------------------------

    def run_group(self, tasks: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
        started = time.time()
        for task in tasks:
            self._mark_started(task, started)
        first = tasks[0]
        log = LazyLog(protocol.log_path(self.run_dir, self.stage_name, first["key"], first["attempt"]))
        base: dict[str, Any] = {"started_at": started}
        results: list[Any] | None = None
        try:
            self.in_task = True
            if not self.stage.call:
                items_file = self.folder / "out" / f"{first['key']}.items.json"
                items_file.parent.mkdir(exist_ok=True)
                protocol.write_json_atomic(items_file, [{"item_key": t["item_key"], "item_id": t["item_id"],
                                                         "params": t["params"]} for t in tasks])
                value = self._run_command(first if mode == "all" else {**first, "params": {}}, log,
                                          extra_env={"CORRAL_ITEMS": str(items_file)})
                if isinstance(value, list) and mode == "batch" and len(value) == len(tasks):
                    results = value
                else:
                    results = [value] * len(tasks)
            else:
                function = self._function(self.stage.call)
                items = [dict(t["params"]) for t in tasks]
                ctx = self._context(first, log, items=items)
                self._set_alarm()
                with _redirect_output(log):
                    value = function(ctx) if mode == "all" else function(items, ctx)
                self._cancel_alarm()
                if isinstance(value, list) and mode == "batch":
                    if len(value) != len(tasks):
                        raise ValueError(f"a batch function returned {len(value)} results for {len(tasks)} items")
                    results = [_result_value(v) for v in value]
                else:
                    results = [_result_value(value)] * len(tasks)
            base["status"] = Outcome.DONE
        except Interrupted as exc:
            base.update(status=Outcome.INTERRUPTED, error_class=ErrorClass.INTERRUPTED, error_message=f"stopped by {exc}")
        except TaskTimeout:
            base.update(status=Outcome.FAILED, error_class=ErrorClass.TIMEOUT, error_message="ran past the stage timeout")
        except CommandFailed as exc:
            base.update(status=Outcome.FAILED, error_class=exc.error_class, error_message=str(exc))
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            log.write(traceback.format_exc())
            base.update(status=Outcome.FAILED, error_class=type(exc).__name__, error_message=_short(exc))
        finally:
            self.in_task = False
            self._cancel_alarm()
            log.close()
        base["finished_at"] = time.time()
        out = []
        for index in range(len(tasks)):
            outcome = dict(base)
            if results is not None:
                outcome["result"] = results[index]
            out.append(outcome)
        return out

    # -- helpers ----------------------------------------------------------------------------

    def _function(self, ref: str) -> Callable[..., Any]:
        if ref not in self._functions:
            module_name, attr = ref.split(":", 1)
            module = importlib.import_module(module_name)
            self._functions[ref] = getattr(module, attr)
        return self._functions[ref]

    def _set_alarm(self) -> None:
        if self.stage.timeout:
            signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, self.stage.timeout)

    def _cancel_alarm(self) -> None:
        if self.stage.timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)


class CommandFailed(Exception):
    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


def _raise_timeout(_signum, _frame) -> None:
    raise TaskTimeout()


def _result_value(value: Any) -> Any:
    # Anything JSON cannot hold is written with str() when the result file is written.
    if value is None or isinstance(value, (dict, list, str, int, float, bool)):
        return value
    return {"value": str(value)}


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:2000] + "..."


def _tail(path: Path, lines: int = 5) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 2000))
            text = handle.read().decode(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("; last output: " + " | ".join(text)) if text else ""


def _terminate(proc: subprocess.Popen, grace: float = 10.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class _redirect_output:
    """Send print() output of a task function to its log file."""

    def __init__(self, stream: LazyLog):
        self.stream = stream

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self.stream  # type: ignore[assignment]
        return self

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved
        return False


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    element = None
    if len(args) == 3 and args[1] == "--element" and args[2].isdigit():
        element = int(args[2])
    elif len(args) != 1:
        print("usage: python -m corral.worker SUBMISSION_DIR [--element K]", file=sys.stderr)
        return 2
    worker = Worker(Path(args[0]), element)
    worker.install_signals()
    try:
        return worker.run()
    except Interrupted:
        return 0
