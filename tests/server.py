"""A real `setapay serve` in a subprocess, and `setapay` commands as an operator runs them.

Shared by the HTTP tests (tests/api), the lifecycle tests and the multi-process
concurrency test. The server runs `python -m engine.cli serve` on a free port
of 127.0.0.1 in a process group of its own, so that stopping it (SIGTERM, then
SIGKILL after 15 s, to the whole group) also stops the uvicorn workers it
forked. Its output goes to a log file whose tail goes into failure messages.

The environment of the server and of the CLI is the test process's without any
`SETAPAY_*` variable, except `SETAPAY_PURE_PYTHON` (`make test`'s second pass forces
the pure-Python kernel, and a server follows it), plus the database URL,
the §9.4 rate limits turned off, and whatever a test adds.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 60
SERVER_STOP_TIMEOUT_S = 15
CLI_TIMEOUT_S = 120
CLIENT_TIMEOUT_S = 60
LOG_TAIL_CHARS = 4000
# `setapay keys create` in this process patches os.environ and sys.stdout, so one at a time.
# Other threads (the vector replays run four servers at once) must not iterate os.environ
# meanwhile: a key the CLI removes between the iteration's listing and its lookup is a KeyError.
# So `setapay_env` reads it under this lock, and our HTTP clients do not read it at all
# (`trust_env=False`: the servers are on 127.0.0.1, never behind a proxy).
_IN_PROCESS_CLI_LOCK = threading.Lock()


def reserved_port() -> tuple[socket.socket, int]:
    """A free port and a socket that holds it: bound (SO_REUSEADDR), never listening, so the
    kernel hands the port to no other bind(port 0) while the server's own listener (SO_REUSEADDR,
    as asyncio and uvicorn bind) still binds it. A port picked by binding and closing at once is
    free again at once: two servers starting together could be given the same one, and the one
    that lost the bind would take the winner's /healthz as its own (a 401 from the other server's
    database, seen once in CI). Close the socket when the server is done with the port."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def setapay_env(database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `setapay serve` and `setapay <command>` run under, on `database_url`."""
    with _IN_PROCESS_CLI_LOCK:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SETAPAY_")}
    if "SETAPAY_PURE_PYTHON" in os.environ:
        env["SETAPAY_PURE_PYTHON"] = os.environ["SETAPAY_PURE_PYTHON"]
    # Tests post far faster than a terminal and send bad keys on purpose: the §9.4 limits are off
    # unless a test sets them (tests/api/test_keys_http.py does).
    env["SETAPAY_RATE_LIMIT_PER_KEY"] = "off"
    env["SETAPAY_AUTH_FAILURES_PER_IP"] = "off"
    env.update(extra or {})
    env["SETAPAY_DATABASE_URL"] = database_url
    return env


# -- the CLI ---------------------------------------------------------------------------


def clock_at(env: dict[str, str], instant: str) -> dict[str, str]:
    """`env` with the engine's clock (`SETAPAY_CLOCK_OFFSET_S`) moved on to just past `instant` when
    it is not there yet: `setapay credit` and `expire` refuse an `--as-of` still to come, so a test
    that runs them for a later day runs them on a clock that has reached it."""
    import datetime as dt

    from engine.timeutil import now_us, to_us

    offset_s = int(env.get("SETAPAY_CLOCK_OFFSET_S", "0"))
    ahead_us = to_us(dt.datetime.fromisoformat(instant)) - (now_us() + offset_s * 1_000_000)
    if ahead_us < 0:
        return env
    return {**env, "SETAPAY_CLOCK_OFFSET_S": str(offset_s + ahead_us // 1_000_000 + 2)}


def run_cli(env: dict[str, str], *args: str, in_process: bool = False) -> subprocess.CompletedProcess:
    """`setapay <args>` under `env`: in a process of its own, as an operator or a cron job runs it,
    or (`in_process`) through the same entry point in this interpreter."""
    if in_process:
        return _run_cli_in_process(env, list(args))
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def _run_cli_in_process(env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess:
    """The same `setapay` entry point and `SETAPAY_*` environment, without a new interpreter.

    Starting Python and importing the stack costs about as much as the rest of a
    vector file's replay; the vector module, which needs dozens of keys, takes
    this path. Everything else runs the real command.
    """
    from engine import cli

    ours = {k: v for k, v in env.items() if k.startswith("SETAPAY_")}
    out, err = io.StringIO(), io.StringIO()
    with _IN_PROCESS_CLI_LOCK:
        saved = {k: os.environ.get(k) for k in ours}
        os.environ.update(ours)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(args)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def create_key(
    env: dict[str, str],
    role: str,
    merchant_id: str | None = None,
    terminal_id: str | None = None,
    in_process: bool = False,
) -> str:
    """A key made the way an operator makes one: `setapay keys create`, the key alone on stdout."""
    args = ["keys", "create", "--role", role]
    if merchant_id:
        args += ["--merchant", merchant_id]
    if terminal_id:
        args += ["--terminal", terminal_id]
    done = run_cli(env, *args, in_process=in_process)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    key = done.stdout.strip()
    assert key and "\n" not in key, done.stdout
    return key


def register_payment_app(env: dict[str, str], app_id: str | None = None, in_process: bool = False):
    """`setapay apps add` as the ward's operator runs it; the app's side of receipts for the tests."""
    from tests.receipts import TEST_APP_ID, payment_app

    app_id = app_id or TEST_APP_ID
    done = run_cli(env, "apps", "add", app_id, in_process=in_process)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return payment_app(app_id, done.stdout.strip())


# -- the server ------------------------------------------------------------------------


class ServerProcess:
    """`setapay serve` in a subprocess and process group of its own, on the given database.

    `start()` launches it and waits for /healthz (stopping it if it never answers);
    `launch()` and `wait_ready()` do the two halves, for a test that does something
    between them. Also a context manager: started on entry, stopped on exit.
    """

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        workers: int | None = None,
        name: str | None = None,
        cli_in_process: bool = False,
        log_tail: int = LOG_TAIL_CHARS,
    ) -> None:
        self.database_url = database_url
        self.workers = workers
        self.name = name
        self.cli_in_process = cli_in_process
        self.log_tail = log_tail
        self.env = setapay_env(database_url, env)
        self.log_path = log_dir / f"server_{name or uuid.uuid4().hex[:8]}.log"
        # Held for the object's life, restarts included (`launch()` again on the same port): let go
        # at `__exit__`, or when the object goes (a server never entered as a context).
        reservation, self.port = reserved_port()
        self._release_port = weakref.finalize(self, reservation.close)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._payment_app = None
        self._payment_app_lock = threading.Lock()
        self._admin_key: str | None = None
        self._admin_key_lock = threading.Lock()

    def _what(self) -> str:
        return f"setapay serve {self.name}" if self.name else "setapay serve"

    # -- lifecycle --

    def launch(self) -> None:
        args = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers is not None:  # else the command's own default (one)
            args += ["--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:  # a restarted server adds to its log
            self.process = subprocess.Popen(
                args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self._what()} exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/healthz", timeout=1, trust_env=False).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self._what()} did not answer /healthz within {SERVER_START_TIMEOUT_S}s:\n{self.log()}")

    def start(self):
        self.launch()
        try:
            self.wait_ready()
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=SERVER_STOP_TIMEOUT_S)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._release_port()  # done with: its port may go to another server

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-self.log_tail :]
        except OSError:
            return ""

    # -- the CLI under the server's environment, and HTTP --

    def cli(self, *args: str, at: str | None = None) -> subprocess.CompletedProcess:
        """`setapay <args>` on this server's database; `at`: on a clock that has reached that instant."""
        return run_cli(self.env if at is None else clock_at(self.env, at), *args, in_process=self.cli_in_process)

    def create_key(self, role: str, merchant_id: str | None = None, terminal_id: str | None = None) -> str:
        return create_key(self.env, role, merchant_id, terminal_id, in_process=self.cli_in_process)

    def create_keys(self, requests: list[tuple[str, str | None, str | None]]) -> list[str]:
        """Several `setapay keys create` at once; each is a process that mostly waits on imports."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda r: self.create_key(*r), requests))

    @property
    def admin_key(self) -> str:
        """The server's admin key, made once (`setapay keys create --role admin`)."""
        with self._admin_key_lock:
            if self._admin_key is None:
                self._admin_key = self.create_key("admin")
            return self._admin_key

    def admin_post(self, path: str, body: dict) -> dict:
        with self.client(self.admin_key) as c:
            r = c.post(path, json=body)
        assert r.status_code == 201, (path, r.status_code, r.text)
        return r.json()

    def configure(self, merchants: list[dict], campaigns: list[dict], terminals: dict[str, str]) -> dict[str, str]:
        """Merchants, campaigns and terminals through the admin API; returns a key per terminal."""
        for merchant in merchants:
            self.admin_post("/v1/merchants", merchant)
        for campaign in campaigns:
            self.admin_post("/v1/campaigns", campaign)
        for terminal_id, merchant_id in terminals.items():
            self.admin_post("/v1/terminals", {"id": terminal_id, "merchant_id": merchant_id})
        ids = list(terminals)
        return dict(zip(ids, self.create_keys([("terminal", None, t) for t in ids])))

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=CLIENT_TIMEOUT_S, trust_env=False)

    @property
    def payment_app(self):
        """The test payment app registered on this server's database (`setapay apps add`), made once."""
        with self._payment_app_lock:
            if self._payment_app is None:
                self._payment_app = register_payment_app(self.env, in_process=self.cli_in_process)
            return self._payment_app

    def terminal_client(self, key: str, payment_app=None) -> httpx.Client:
        """A terminal's client whose transactions carry the payment app's receipts (tests/receipts.py)."""
        from tests.receipts import SigningTransport

        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=CLIENT_TIMEOUT_S,
            transport=SigningTransport(payment_app or self.payment_app),
            trust_env=False,
        )
