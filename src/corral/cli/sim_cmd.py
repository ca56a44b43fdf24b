"""``corral sim serve``: a local Batch API to rehearse a campaign without a network or money."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer

from corral.cli.output import err
from corral.errors import CorralError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A local OpenAI/Anthropic Batch API simulator.",
                  context_settings={"help_option_names": ["-h", "--help"]})


PORT = typer.Option(8765, "--port", "-p", help="Port to listen on (0: any free port).")
HOST = typer.Option("127.0.0.1", "--host", help="Address to listen on.")
SEED = typer.Option(None, "--seed", help="Seed for turnaround and fault draws.")
CONFIG = typer.Option(None, "--config", "-c", help="Simulator settings (YAML).")
SPEED = typer.Option(1.0, "--speed", help="Simulated seconds per real second (60: a day in 24 min).")


@app.command()
def serve(port: int = PORT, host: str = HOST, seed: int | None = SEED, config: Path | None = CONFIG,
          speed: float = SPEED) -> None:
    """Serve the OpenAI Files + Batches and Anthropic Message Batches APIs until interrupted."""
    from corral.sim import RealClock, SimConfig, SimServer

    if speed <= 0:
        raise CorralError(f"--speed must be positive, not {speed}")
    if not 0 <= port <= 65535:
        raise CorralError(f"--port {port} is not a port number (0-65535)")
    settings = SimConfig.from_yaml(config) if config else SimConfig()
    if seed is not None:
        settings.seed = seed
    sim = SimServer(settings, clock=RealClock(speed), host=host, port=port)
    try:
        base = sim.start()
    except OSError as exc:
        raise CorralError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    err.print(f"corral sim serving on {base} (seed {settings.seed}, speed x{speed:g})", highlight=False)
    err.print(f"  OpenAI:    OpenAI(base_url=\"{base}/v1\", api_key=\"sim\")", highlight=False)
    err.print(f"  Anthropic: Anthropic(base_url=\"{base}\", api_key=\"sim\")", highlight=False)
    err.print(f"  state:     GET {base}/sim/state; stop with Ctrl-C", highlight=False)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sim.stop()
    err.print("corral sim stopped")
