"""Keeps a pod's ``controller.kubernetes.io/pod-deletion-cost`` at its number of live calls,
so that when a Deployment scales down, its ReplicaSet removes the pod with the fewest calls:
the one whose drain ends soonest and cuts least.

It runs beside the server, in the same pod (``flowcat-ft pod-cost``, a sidecar container):
every ``interval`` seconds it reads ``flowcat_calls_active`` from the server's ``/metrics``
over loopback and, when the number changed, patches the pod's annotation through the
Kubernetes API (a JSON merge patch, with the pod's service-account token; the pod's Role
must allow ``patch`` on ``pods``). Kubernetes asks that the annotation not change often (each
change is a write to the API server), so two patches are at least ``min_interval`` apart.

Written on the standard library: one small PATCH now and then needs no Kubernetes client.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ANNOTATION", "KubernetesAPI", "PodDeletionCost"]

logger = logging.getLogger("flowcat_ft.podcost")

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubernetesAPI:
    """The Kubernetes API server, and how this pod authenticates to it."""

    url: str
    token: str
    tls: ssl.SSLContext | None = None

    @classmethod
    def in_cluster(cls, url: str | None = None, token_file: Path | None = None) -> KubernetesAPI:
        """The API as a pod reaches it: the address Kubernetes puts in the environment
        (or ``url``), the service-account token and CA certificate it mounts. Raises
        ``OSError`` naming what is missing."""
        if url is None:
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            if not host:
                raise OSError("KUBERNETES_SERVICE_HOST is not set: not running in a pod?")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            url = f"https://{host}:{port}"
        token_file = token_file or SERVICE_ACCOUNT / "token"
        try:
            token = token_file.read_text().strip()
        except OSError as error:
            raise OSError(
                f"no service-account token at {token_file} (automountServiceAccountToken?)"
            ) from error
        tls = None
        if url.startswith("https:"):
            tls = ssl.create_default_context(cafile=SERVICE_ACCOUNT / "ca.crt")
        return cls(url.rstrip("/"), token, tls)

    def annotate_pod(self, namespace: str, pod: str, annotations: dict[str, str]) -> None:
        """Set ``annotations`` on the pod; raises ``OSError`` (``HTTPError`` for a refusal)."""
        body = json.dumps({"metadata": {"annotations": annotations}}).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v1/namespaces/{namespace}/pods/{pod}",
            data=body,
            method="PATCH",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/merge-patch+json",
            },
        )
        with urllib.request.urlopen(request, timeout=10, context=self.tls) as reply:
            reply.read()


class PodDeletionCost:
    """Patches a pod's deletion cost whenever its server's number of calls changes.

    ``metrics_url`` is the server's ``/metrics``; :meth:`step` does one round, :meth:`run`
    rounds every ``interval`` seconds until its ``stop`` event is set. One thread only.
    """

    def __init__(
        self,
        api: KubernetesAPI,
        namespace: str,
        pod: str,
        metrics_url: str,
        *,
        interval: float = 5.0,
        min_interval: float = 10.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.pod = pod
        self.metrics_url = metrics_url
        self.interval = interval
        self.min_interval = min_interval
        self.cost: int | None = None  # the cost last patched onto the pod
        self._patched_at = -float("inf")

    def run(self, stop: threading.Event) -> None:
        while True:
            self.step()
            if stop.wait(self.interval):
                return

    def step(self) -> int | None:
        """Read the calls; patch the pod if they changed and the last patch is old enough.
        Returns the cost patched (None: nothing was)."""
        calls = self._calls()
        now = time.monotonic()
        if calls is None or calls == self.cost or now - self._patched_at < self.min_interval:
            return None
        try:
            self.api.annotate_pod(self.namespace, self.pod, {ANNOTATION: str(calls)})
        except urllib.error.HTTPError as error:
            logger.warning(
                "cannot annotate pod %s/%s: %s %s (does its Role allow patch on pods?)",
                self.namespace,
                self.pod,
                error.code,
                error.reason,
            )
            return None
        except OSError as error:
            logger.warning("cannot reach the Kubernetes API at %s: %s", self.api.url, error)
            return None
        self.cost, self._patched_at = calls, now
        return calls

    def _calls(self) -> int | None:
        """The server's live calls (None while it does not answer: starting or gone)."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "flowcat_calls_active":
                return int(float(value))
        return None
