"""The simulator's HTTP server: routing, injected HTTP faults, and the ``SimServer`` handle."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

from corral.sim.clock import Clock, RealClock
from corral.sim.core import Account, SimState
from corral.sim.flex import Due, Tier
from corral.sim.model import SimConfig
from corral.sim.web import ApiError, Req, Resp, json_resp


#: what ``SimServer.fail_next`` can do to a call
SCRIPTED_FAULTS = ("disconnect", "http_5xx", "not_found", "timeout")
#: the answer to a call whose connection is closed without one
DISCONNECT = Resp(0, b"")


class SimServer:
    """A local Batch API (OpenAI Files + Batches, Anthropic Message Batches, Gemini Batch) on 127.0.0.1.

    ``clock`` is anything with ``now()`` (seconds); None means real time. State advances lazily from
    the clock on each request, so a virtual clock shared with the engine makes days pass in seconds.
    """

    def __init__(self, config: SimConfig | None = None, clock: Clock | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        from corral.sim.anthropic_api import AnthropicApi
        from corral.sim.gemini_api import GeminiApi
        from corral.sim.openai_api import OpenAIApi

        self.config = config or SimConfig()
        self.clock = clock or RealClock()
        self.host, self.port = host, port
        self.account = Account(self.config, self.clock.now)
        self.openai = OpenAIApi(self.account)
        self.anthropic = AnthropicApi(self.account)
        self.gemini = GeminiApi(self.account)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: route ("POST /v1/files") -> [how, calls left] for fail_next
        self._scripted: dict[str, list] = {}
        #: notified as each answer waiting for its time (flex) is settled: stop() waits for them all
        self._settled = threading.Condition()

    @property
    def state(self) -> SimState:
        return self.account.state

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the simulator is not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> str:
        """Serve in a daemon thread; returns the base URL (OpenAI SDK: base_url + "/v1")."""
        if self._httpd is None:
            self._httpd = _HTTPServer((self.host, self.port), _Handler)
            self._httpd.sim = self
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="corral-sim", daemon=True)
            self._thread.start()
        return self.base_url

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop()`` (from a signal handler or another thread)."""
        if self._httpd is None:
            self._httpd = _HTTPServer((self.host, self.port), _Handler)
            self._httpd.sim = self
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.stopping.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.close_connections()
            if self._thread is not None:
                self._thread.join(timeout=5)
            with self._settled:
                self._settled.wait_for(lambda: self.openai.sync.waiting == 0, timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, **rates: float) -> None:
        """Change fault rates now (batch-level and line-level rates apply to batches created from now on)."""
        with self.account.lock:
            self.config.set_faults(**rates)

    def fail_next(self, route: str, times: int = 1, how: str = "disconnect") -> None:
        """The next ``times`` calls of ``route`` (as ``state.http_requests`` names them, e.g.
        ``"POST /v1/files"``) fail before anything happens: ``disconnect`` closes the connection
        without an answer (the SDKs raise APIConnectionError), ``http_5xx`` answers 500 (Anthropic
        529), ``not_found`` answers 404, ``timeout`` does the call and holds its answer back for
        ``timeout_delay_s`` (a client with a shorter timeout gives up on a call that took effect).
        Unlike the rates, this is exact: for tests of one failure."""
        if how not in SCRIPTED_FAULTS:
            raise ValueError(f"unknown scripted fault {how!r}; one of {', '.join(SCRIPTED_FAULTS)}")
        with self.account.lock:
            self._scripted[route] = [how, int(times)]

    def advance(self, seconds: float) -> None:
        """Move a virtual clock forward (only for clocks that can be advanced)."""
        if not hasattr(self.clock, "advance"):
            raise TypeError("this simulator runs on real time; give it a virtual clock to advance")
        self.clock.advance(seconds)

    def summary(self) -> dict[str, Any]:
        """A JSON-able view of the state (also served at GET /sim/state)."""
        with self.account.lock:
            now = self.clock.now()
            self.account.sync(now)
            state = self.state
            phases: dict[str, int] = {}
            for batch in state.batches.values():
                if batch.provider == "anthropic":
                    status = "ended" if batch.ended(now) else "canceling" if batch.cancel_at is not None \
                        else "in_progress"
                else:
                    status = batch.phase(now)
                key = f"{batch.provider}:{status}"
                phases[key] = phases.get(key, 0) + 1
            return {"now": now, "batches_created": dict(state.batches_created),
                    "requests_enqueued": dict(state.requests_enqueued), "batches_by_status": phases,
                    "faults": dict(state.faults), "rejections": dict(state.rejections),
                    "token_limit_failures": state.token_limit_failures, "files_uploaded": state.files_uploaded,
                    "http_requests": dict(state.http_requests), "fault_rates": self.config.fault_rates(),
                    **self.openai.sync.summary()}

    def flex_billed(self) -> Counter:
        """Flex answers billed per client request id (the X-Client-Request-Id header)."""
        with self.account.lock:
            return self.openai.sync.billed((Tier.FLEX,))

    def sync_billed(self) -> Counter:
        """Synchronous answers billed per client request id, at every tier (flex included)."""
        with self.account.lock:
            return self.openai.sync.billed()

    def await_due(self, due: Due, stopping: threading.Event) -> Resp:
        """Wait, without holding the account's lock, until the clock reaches ``due.at``; then settle and
        return its answer, or DISCONNECT if the server stops first."""
        answered = False
        try:
            answered = self._wait_until(due.at, stopping)
        finally:
            due.settle(answered)
            with self._settled:
                self._settled.notify_all()
        return due.resp if answered else DISCONNECT

    def _wait_until(self, t: float, stopping: threading.Event) -> bool:
        """Block until the clock reads ``t`` (a virtual clock: until another thread advances it); False if
        ``stopping`` is set first."""
        wait_until = getattr(self.clock, "wait_until", None)
        speed = getattr(self.clock, "speed", 1.0)
        while not stopping.is_set():
            now = self.clock.now()
            if now >= t:
                return True
            if wait_until is not None:
                wait_until(t, 0.5)
            else:
                stopping.wait(min((t - now) / speed, 1.0))
        return False

    # -- dispatch -------------------------------------------------------------------------------------
    def handle(self, req: Req) -> tuple[Resp | Due, float]:
        """Answer one request; the float is how long to hold the answer back (an injected timeout), in
        real seconds after a ``Due`` answer's time."""
        if req.path.startswith("/sim/") or req.path == "/sim":
            return self._control(req), 0.0
        api = self.anthropic if req.path.startswith("/v1/messages") else \
            self.gemini if req.path.startswith(("/v1beta/", "/upload/v1beta/")) else self.openai
        route, handler, args = self._route(api, req)
        with self.account.lock:
            self.state.http_requests[route] += 1
            fault = self._scripted_fault(route) or self._http_fault()
        if fault == "disconnect":
            return DISCONNECT, 0.0
        if fault == "not_found":
            return api.error(ApiError(404, "not_found_error" if api is self.anthropic else "invalid_request_error",
                                      f"No such object: {req.path} (injected fault)")), 0.0
        if fault == "http_5xx":
            status, kind = (529, "overloaded_error") if api is self.anthropic else (500, "server_error")
            return api.error(ApiError(status, kind, "The server had an error while processing your request. "
                                      "(injected fault)", headers=self._retry_headers())), 0.0
        if fault == "http_429":
            return api.error(ApiError(429, "rate_limit_error" if api is self.anthropic else "requests",
                                      "Rate limit reached for requests. (injected fault)", code="rate_limit_exceeded",
                                      headers=self._retry_headers())), 0.0
        if handler is None:
            return api.error(ApiError(404, "not_found_error" if api is self.anthropic else "invalid_request_error",
                                      f"Unknown request URL: {req.method} {req.path}.")), 0.0
        # A Gemini upload URL is authorised by its upload_id (the SDK sends no key with the chunks).
        if not (req.headers.get("authorization") or req.headers.get("x-api-key") or req.headers.get("x-goog-api-key")
                or (api is self.gemini and req.query.get("upload_id"))):
            return api.error(ApiError(401, "authentication_error" if api is self.anthropic else "invalid_request_error",
                                      "You didn't provide an API key.")), 0.0
        with self.account.lock:
            now = self.clock.now()
            self.account.sync(now)
            try:
                resp = handler(req, now, *args)
            except ApiError as exc:
                resp = api.error(exc)
        return resp, (self.config.timeout_delay_s if fault == "timeout" else 0.0)

    @staticmethod
    def _route(api: Any, req: Req) -> tuple[str, Any, tuple[str, ...]]:
        for method, pattern, name, handler in api.routes:
            match = pattern.fullmatch(req.path)
            if match and method == req.method:
                return name, handler, match.groups()
        return f"{req.method} (unknown)", None, ()

    def _scripted_fault(self, route: str) -> str | None:
        scripted = self._scripted.get(route)
        if not scripted or scripted[1] <= 0:
            return None
        scripted[1] -= 1
        self.state.faults[scripted[0]] += 1
        return scripted[0]

    def _http_fault(self) -> str | None:
        for name in ("http_5xx", "http_429", "timeout"):
            if self.account.roll(getattr(self.config, name)):
                self.state.faults[name] += 1
                return name
        return None

    def _retry_headers(self) -> dict[str, str]:
        seconds = self.config.retry_after_s
        return {"retry-after-ms": str(int(seconds * 1000)), "retry-after": str(max(1, round(seconds)))}

    def _control(self, req: Req) -> Resp:
        """Sim-only endpoints for rehearsals: GET /sim/state, POST /sim/faults, POST /sim/advance."""
        try:
            if req.method == "GET" and req.path == "/sim/state":
                return json_resp(self.summary())
            body = req.json() or {}
            if req.method == "POST" and req.path == "/sim/faults" and isinstance(body, dict):
                self.set_faults(**body)
                return json_resp(self.config.fault_rates())
            if req.method == "POST" and req.path == "/sim/advance" and isinstance(body, dict):
                self.advance(float(body.get("seconds", 0)))
                return json_resp({"now": self.clock.now()})
        except (ValueError, TypeError) as exc:
            return json_resp({"error": {"message": str(exc), "type": "invalid_request_error"}}, 400)
        except ApiError as exc:
            return self.openai.error(exc)
        return json_resp({"error": {"message": f"unknown simulator control {req.method} {req.path}",
                                    "type": "invalid_request_error"}}, 404)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sim: SimServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: set by SimServer.stop: answers still waiting for their time are dropped
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop kept-alive connections too, so a stopped simulator answers nothing, like a dead server."""
        with self.connections_lock:
            connections, self.connections = self.connections, set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One buffered write per answer and no Nagle delay: keep-alive round trips take microseconds, not 40 ms.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self._send(json_resp({"error": {"message": "unreadable request body", "type": "invalid_request_error"}},
                                 400))
            return
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        host = headers.get("host") or f"{self.server.sim.host}:{self.server.server_address[1]}"
        req = Req(self.command, parts.path.rstrip("/") or "/", Req.parse_query(parts.query), headers, body,
                  f"http://{host}")
        sim, stopping = self.server.sim, self.server.stopping
        try:
            resp, delay = sim.handle(req)
            if isinstance(resp, Due):
                resp = sim.await_due(resp, stopping)
        except Exception as exc:  # noqa: BLE001 (a bug in the simulator: answer like a server would, never hang the client)
            resp, delay = json_resp({"error": {"message": f"simulator error: {type(exc).__name__}: {exc}",
                                               "type": "server_error"}}, 500, {"x-should-retry": "false"}), 0.0
        if delay:
            stopping.wait(delay)
        if resp is DISCONNECT or stopping.is_set():
            self.close_connection = True
            return
        self._send(resp)

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, resp: Resp) -> None:
        try:
            self.send_response(resp.status)
            self.send_header("content-type", resp.content_type)
            self.send_header("content-length", str(len(resp.body)))
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


