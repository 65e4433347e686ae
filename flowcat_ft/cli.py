"""The ``flowcat-ft`` command: ``flowcat-ft serve [agent.yaml]``; ``flowcat-ft stream-url
CARRIER [agent.yaml]`` for a carrier that streams to it without a webhook; and for fleets
``flowcat-ft drain`` (a Kubernetes preStop hook) and ``flowcat-ft pod-cost`` (a sidecar
that keeps a pod's deletion cost at its number of calls).

Signals to ``serve``: SIGTERM (or Ctrl-C) starts the drain: ``/ready`` answers 503, new
calls are refused, live calls go on for up to ``limits.shutdown_grace`` seconds, and the
process exits 0 once the last one ends. A second SIGTERM, or the end of the grace, ends the
calls still live. SIGUSR1 starts the drain without stopping: the process stays up, taking no
call, until a SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from flowcat_ft.server.app import AgentServer, stream_tokens
from flowcat_ft.server.config import Config, ConfigError, GraphLLMConfig, load_config
from flowcat_ft.server.logs import configure_logging
from flowcat_ft.server.podcost import ANNOTATION, KubernetesAPI, PodDeletionCost
from flowcat_ft.server.webhooks import CALL_ID_FIELDS


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    if args.command == "drain":
        return _drain(args.pid, args.port, args.wait)
    if args.command == "pod-cost":
        return _pod_cost(args)
    try:
        config = load_config(args.config)
        if args.command == "stream-url":
            print(_stream_url(config, args.carrier, args.days))
            return 0
        config = _with_options(config, args)
    except ConfigError as error:
        print(f"flowcat-ft: {error}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level, config.logging.format)
    return _serve(config, args.profile)


def command_line() -> argparse.ArgumentParser:
    """The parser of ``flowcat-ft``'s arguments (deployment files' commands are checked
    against it)."""
    parser = argparse.ArgumentParser(prog="flowcat-ft", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve an agent to callers and browsers",
        description="Serve the agent CONFIG describes (the offline agent without one); "
        "the options below override the file.",
    )
    serve.add_argument("config", nargs="?", help="agent YAML (see examples/agent.yaml)")
    serve.add_argument(
        "--agent",
        choices=("offline", "echo"),
        help="offline: a talking agent that needs no network; echo: hear yourself",
    )
    serve.add_argument("--graph", help="conversation graph YAML for the offline agent")
    serve.add_argument(
        "--host",
        help="address to listen on (default 127.0.0.1: this machine only; any other needs "
        "server.access_token_env, or --insecure)",
    )
    serve.add_argument("--port", type=int, help="port to listen on (default 8765)")
    serve.add_argument("--loops", type=int, help="event-loop threads (default: one per core)")
    serve.add_argument("--max-calls", type=int)
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve other machines with no access token: anyone who can reach the port "
        "can open calls",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING...")
    serve.add_argument("--log-format", choices=("text", "json"))
    serve.add_argument(
        "--profile",
        metavar="DIR",
        help="profile stage threads with pyinstrument into DIR (turns the GIL on)",
    )
    stream_url = commands.add_parser(
        "stream-url",
        help="a stream URL for a carrier that streams to this server without a webhook",
        description="Print a media-stream URL with a long-lived token that admits any call "
        "of CARRIER, for streams started without a webhook answer (a carrier's REST API, a "
        "URL typed into its console). Needs server.public_url and "
        "transports.stream_token_key_env in CONFIG.",
    )
    stream_url.add_argument("carrier", choices=sorted(CALL_ID_FIELDS))
    stream_url.add_argument("config", nargs="?", help="agent YAML (see examples/agent.yaml)")
    stream_url.add_argument(
        "--days", type=float, default=30.0, help="how long the URL stays valid (default 30)"
    )
    drain = commands.add_parser(
        "drain",
        help="make a running server take no new calls (a Kubernetes preStop hook)",
        description="Start the drain of the flowcat-ft serve process PID (SIGUSR1), check "
        "that its /ready answers that it drains, then wait for load balancers to see it. "
        "Live calls go on; the SIGTERM that follows stops the server once they end.",
    )
    drain.add_argument("--pid", type=int, required=True, help="the server's process id")
    drain.add_argument("--port", type=int, default=8765, help="its port (default 8765)")
    drain.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then wait this long, for load balancers to stop sending calls (default 0)",
    )
    pod_cost = commands.add_parser(
        "pod-cost",
        help="keep this pod's deletion cost at its number of calls (a Kubernetes sidecar)",
        description="Keep the pod's controller.kubernetes.io/pod-deletion-cost at the number "
        "of calls its server carries, so a scale-down removes the emptiest pod. The pod is "
        "named by POD_NAME and POD_NAMESPACE (the downward API).",
    )
    pod_cost.add_argument("--port", type=int, default=8765, help="the server's port (8765)")
    pod_cost.add_argument(
        "--interval", type=float, default=5.0, help="seconds between reads (default 5)"
    )
    pod_cost.add_argument(
        "--min-interval",
        type=float,
        default=10.0,
        help="seconds at least between two patches of the pod (default 10)",
    )
    pod_cost.add_argument("--api-server", help="the Kubernetes API's URL (default: in-cluster)")
    pod_cost.add_argument(
        "--token-file", type=Path, help="the service-account token (default: the mounted one)"
    )
    return parser


def _with_options(config: Config, args: argparse.Namespace) -> Config:
    """The configuration with the command line's options in place of the file's."""
    server = {"host": args.host, "port": args.port, "loops": args.loops, "insecure": args.insecure}
    limits = {"max_calls": args.max_calls}
    logging = {"level": args.log_level and args.log_level.upper(), "format": args.log_format}
    agent = {"kind": args.agent}
    if args.graph is not None:
        if not isinstance(config.agent.llm, GraphLLMConfig):
            raise config.error("agent.llm", "--graph needs the graph engine (llm.engine: graph)")
        graph = Path(args.graph)
        if not graph.is_file():
            raise ConfigError(args.graph, None, "", "no such graph file")
        agent["llm"] = dataclasses.replace(config.agent.llm, graph=graph)
    config = dataclasses.replace(
        config,
        server=_replace(config.server, server),
        limits=_replace(config.limits, limits),
        logging=_replace(config.logging, logging),
        agent=_replace(config.agent, agent),
    )
    if args.agent == "echo":  # at the carrier's own rate, as the echo agent wants
        config = dataclasses.replace(
            config, agent=dataclasses.replace(config.agent, sample_rate=None)
        )
    return config


def _stream_url(config: Config, carrier: str, days: float) -> str:
    """A ``wss://`` URL of ``carrier``'s stream route with a token for any of its calls."""
    public_url = config.server.public_url
    if public_url is None:
        raise config.error("server.public_url", "say where the carrier reaches this server")
    if config.transports.stream_token_key_env is None:
        raise config.error(
            "transports.stream_token_key_env",
            "name the key that signs stream tokens: a random one dies with the process",
        )
    if carrier not in config.transports.carriers:
        raise config.error("transports.carriers", f"{carrier} is not served")
    if days <= 0:
        raise ConfigError("--days", None, "", f"must be more than 0, got {days:g}")
    token = stream_tokens(config.transports).issue(carrier, ttl=days * 86400)
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/{carrier}/{token}"


def _replace(section, options: dict[str, object]):
    given = {name: value for name, value in options.items() if value is not None}
    return dataclasses.replace(section, **given) if given else section


class _Signals:
    """SIGTERM and SIGINT (counted) and SIGUSR1, as the main thread sees them.

    The handlers only note the signal: Python runs them on the main thread, which may hold
    a server's lock at that moment."""

    def __init__(self) -> None:
        self.stops = 0
        self.drain = False
        self._arrived = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGUSR1, self._drain)

    def _stop(self, *_: object) -> None:
        self.stops += 1
        self._arrived.set()

    def _drain(self, *_: object) -> None:
        self.drain = True
        self._arrived.set()

    def wait(self, timeout: float) -> None:
        """Until a signal arrives, or ``timeout`` seconds. The kernel may deliver a signal
        to any thread, leaving the main thread asleep here: callers wake it often."""
        self._arrived.wait(timeout)
        self._arrived.clear()


def _serve(config: Config, profile_dir: str | None) -> int:
    def progress(step: str) -> None:
        print(f"  {step}", flush=True)

    # Handlers first: a signal during start-up stops the server once it has started.
    signals = _Signals()

    def warn(message: str) -> None:
        print(f"flowcat-ft: WARNING: {message}", file=sys.stderr, flush=True)

    server = AgentServer(config, progress=progress, warn=warn, profile_dir=profile_dir)
    print(f"{server.describe()}: starting the {config.agent.kind} agent", flush=True)
    try:
        server.start()
    except ConfigError as error:
        print(f"flowcat-ft: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f"{config.server.host}:{config.server.port}"
        print(f"flowcat-ft: cannot listen on {where}: {error}", file=sys.stderr)
        return 1
    for name, url in server.urls().items():
        print(f"  {name:10} {url}")
    print("Ctrl-C to stop.", flush=True)
    draining = False
    while not signals.stops:
        if signals.drain and not draining:
            draining = True
            server.drain()
            print(
                f"draining: no new calls, {server.live_calls()} live; SIGTERM to stop", flush=True
            )
        signals.wait(0.25)
    server.drain()
    grace = config.limits.shutdown_grace
    print(
        f"draining: no new calls, {server.live_calls()} live, given up to {grace:g} s to finish "
        "(SIGTERM again ends them)",
        flush=True,
    )
    deadline = time.monotonic() + grace
    while signals.stops < 2 and (left := deadline - time.monotonic()) > 0:
        if server.wait_for_calls(min(left, 0.25)):
            break
    live = server.live_calls()
    server.stop(grace=0)
    print(f"stopped: {f'ended the calls still live: {live}' if live else 'every call had ended'}")
    return 0


def _drain(pid: int, port: int, wait: float) -> int:
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as error:
        print(f"flowcat-ft drain: cannot signal process {pid}: {error}", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{port}/ready"
    deadline = time.monotonic() + 10
    while (answer := _get(url)) is None or "draining" not in answer:
        if time.monotonic() > deadline:
            print(f"flowcat-ft drain: {url} does not say it drains: {answer}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"draining; waiting {wait:g} s for load balancers to stop sending calls", flush=True)
    time.sleep(wait)
    return 0


def _pod_cost(args: argparse.Namespace) -> int:
    pod, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not pod or not namespace:
        print(
            "flowcat-ft pod-cost: set POD_NAME and POD_NAMESPACE (the downward API's "
            "metadata.name and metadata.namespace)",
            file=sys.stderr,
        )
        return 2
    try:
        api = KubernetesAPI.in_cluster(args.api_server, args.token_file)
    except OSError as error:
        print(f"flowcat-ft pod-cost: {error}", file=sys.stderr)
        return 2
    configure_logging("INFO", "text")
    metrics = f"http://127.0.0.1:{args.port}/metrics"
    updater = PodDeletionCost(
        api, namespace, pod, metrics, interval=args.interval, min_interval=args.min_interval
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"pod-cost: keeping {namespace}/{pod}'s {ANNOTATION} at its calls", flush=True)
    updater.run(stop)
    return 0


def _get(url: str) -> str | None:
    """The body of a GET, whatever its status (None: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.read().decode()
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
