"""The API server as `kubectl finetune` sees it: the user's kubeconfig, context and namespace, and the few
reads the subcommands need (resources, their Events, Jobs, pods and logs), answered as wire-form dicts.

Every API error becomes a `PluginError` naming the resource and the fix (see `errors`).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes import watch
from kubernetes.client import ApiException
from kubernetes.config import ConfigException

from finetune_operator.api import API_GROUP, VERSION, KindInfo
from finetune_operator.kubectl.errors import ExitCode, PluginError, api_message, crds_missing, forbidden

T = TypeVar("T")


class Cluster:
    """One API server, context and namespace (kubectl's resolution: flag, then the context's, then
    `default`)."""

    def __init__(
        self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None
    ) -> None:
        try:
            self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            self.context = chosen["name"]
            ns_default = (chosen.get("context") or {}).get("namespace")
        except (ConfigException, OSError, TypeError) as exc:
            where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
            raise PluginError(
                ExitCode.ERROR,
                f"cannot load the kubeconfig ({where}{', context ' + context if context else ''}): {exc}. "
                "Pass --kubeconfig and --context, or set KUBECONFIG.",
            ) from exc
        self.namespace = namespace or ns_default or "default"
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.batch = kubernetes.client.BatchV1Api(self.api)

    # -- calls ---------------------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`; 403 and connection errors become `PluginError`s, other API errors
        propagate (callers decide what 404 means)."""
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 403:
                raise forbidden(exc, what) from exc
            if exc.status == 401:
                raise PluginError(
                    ExitCode.FORBIDDEN,
                    f"the API server ({self.context}) does not accept these credentials: {api_message(exc)}",
                ) from exc
            raise
        except urllib3.exceptions.HTTPError as exc:
            raise PluginError(
                ExitCode.ERROR,
                f"cannot reach the API server of context {self.context} ({self.api.configuration.host}): "
                f"{exc}",
            ) from exc

    def raw(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """A generated-client call read as wire JSON (camelCase keys, no model objects)."""
        response = self.call(what, fn, *args, _preload_content=False, **kwargs)
        return json.loads(response.data)

    def group_served(self) -> bool:
        """Whether the API server knows `finetune.dev/v1alpha1` (the CRDs are installed)."""
        params = self.api.param_serialize(
            "GET", f"/apis/{API_GROUP}/{VERSION}", auth_settings=["BearerToken"]
        )
        response = self.call(f"the API group {API_GROUP}", self.api.call_api, *params)
        response.read()
        return response.status != 404

    def _not_served_or(self, exc: ApiException, what: str) -> PluginError:
        """A 404 on a collection means the CRDs are missing; any other answer is an error about `what`."""
        if exc.status == 404 and not self.group_served():
            return crds_missing(self.context)
        return PluginError(ExitCode.ERROR, f"{what}: {exc.status} {api_message(exc)}")

    # -- resources -----------------------------------------------------------------------------------

    def get(self, kind: KindInfo, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The resource as the API server holds it; None when it does not exist (the CRDs do)."""
        ns = namespace or self.namespace
        what = f"{kind.plural}.{API_GROUP} in namespace {ns}"
        try:
            return self.call(
                what, self.custom.get_namespaced_custom_object, API_GROUP, VERSION, ns, kind.plural, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise PluginError(ExitCode.ERROR, f"{what}: {exc.status} {api_message(exc)}") from exc
            if not self.group_served():
                raise crds_missing(self.context) from exc
            return None

    def list(self, kind: KindInfo, all_namespaces: bool = False) -> list[dict[str, Any]]:
        what = f"{kind.plural}.{API_GROUP}" + ("" if all_namespaces else f" in namespace {self.namespace}")
        try:
            if all_namespaces:
                body = self.call(
                    what, self.custom.list_cluster_custom_object, API_GROUP, VERSION, kind.plural
                )
            else:
                body = self.call(
                    what,
                    self.custom.list_namespaced_custom_object,
                    API_GROUP,
                    VERSION,
                    self.namespace,
                    kind.plural,
                )
        except ApiException as exc:
            raise self._not_served_or(exc, what) from exc
        return list(body.get("items") or [])

    def watch(
        self, kinds: tuple[KindInfo, ...], all_namespaces: bool = False, timeout: int | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) of every change to `kinds`, from one watch stream per kind, merged. Ends
        after `timeout` seconds (None: never)."""
        events: queue.Queue[tuple[str, dict[str, Any]] | BaseException | None] = queue.Queue()

        def follow(kind: KindInfo) -> None:
            try:
                w = watch.Watch()
                if all_namespaces:
                    stream = w.stream(
                        self.custom.list_cluster_custom_object,
                        API_GROUP,
                        VERSION,
                        kind.plural,
                        timeout_seconds=timeout,
                    )
                else:
                    stream = w.stream(
                        self.custom.list_namespaced_custom_object,
                        API_GROUP,
                        VERSION,
                        self.namespace,
                        kind.plural,
                        timeout_seconds=timeout,
                    )
                for event in stream:
                    events.put((event["type"], event["object"]))
                events.put(None)
            except BaseException as exc:  # handed to the reader, which raises it
                events.put(exc)

        threads = [threading.Thread(target=follow, args=(k,), daemon=True) for k in kinds]
        for t in threads:
            t.start()
        open_streams = len(threads)
        while open_streams:
            item = events.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, ApiException):
                raise self._not_served_or(item, f"watching {API_GROUP}") from item
            elif isinstance(item, urllib3.exceptions.HTTPError):  # the server went away mid-watch
                raise PluginError(
                    ExitCode.ERROR,
                    f"the watch ended: the API server of context {self.context} "
                    f"({self.api.configuration.host}) closed the connection ({item}); run the command again "
                    "once it is back",
                ) from item
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    def watch_one(
        self, kind: KindInfo, name: str, namespace: str, timeout: float
    ) -> Iterator[dict[str, Any]]:
        """The resource each time it changes (a watch on its name), until `timeout` seconds have passed."""
        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object,
            API_GROUP,
            VERSION,
            namespace,
            kind.plural,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, int(timeout + 0.999)),
        )
        try:
            for event in stream:
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield event["object"]
        except ApiException as exc:
            if exc.status == 403:
                raise forbidden(exc, f"{kind.plural}.{API_GROUP} in namespace {namespace}") from exc
            raise self._not_served_or(exc, f"watching {kind.kind} {name}") from exc

    # -- what belongs to a resource ------------------------------------------------------------------

    def events(self, kind: KindInfo, name: str, namespace: str) -> list[dict[str, Any]]:
        """core/v1 Events about the resource, oldest first."""
        selector = f"involvedObject.kind={kind.kind},involvedObject.name={name}"
        try:
            body = self.raw(
                f"events in namespace {namespace}",
                self.core.list_namespaced_event,
                namespace,
                field_selector=selector,
            )
        except PluginError as err:
            if err.code != ExitCode.FORBIDDEN:
                raise
            return []  # events are an extra: describe still says what it can
        items = body.get("items") or []
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self._items("jobs", self.batch.list_namespaced_job, namespace, selector)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self._items("pods", self.core.list_namespaced_pod, namespace, selector)

    def _items(
        self, what: str, list_fn: Callable[..., Any], namespace: str, selector: str
    ) -> list[dict[str, Any]]:
        """The wire items of a namespaced list call with a label selector."""
        body = self.raw(f"{what} in namespace {namespace}", list_fn, namespace, label_selector=selector)
        return list(body.get("items") or [])

    def pod_log(self, namespace: str, pod: str, container: str, follow: bool) -> Iterator[bytes]:
        """The container's log (pods/log), streamed in chunks as they come."""
        response = self.call(
            f"pods/log in namespace {namespace}",
            self.core.read_namespaced_pod_log,
            pod,
            namespace,
            container=container,
            follow=follow,
            _preload_content=False,
        )
        try:
            yield from response.stream(4096, decode_content=True)
        finally:
            response.release_conn()
