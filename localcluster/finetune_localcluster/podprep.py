"""How the pod runner turns a pod's volumes and env into local folders, files and a process environment.

``PodPreparer`` reads the ConfigMaps, Secrets and service-account tokens a pod refers to from the API and
writes them as files; the pure rules (env resolution, mount-path substitution) live in ``podspec``. A
missing non-optional reference raises ``podspec.MissingReference``: the container cannot start yet.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from . import podspec

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass
class PreparedContainer:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    term_file: Path


class PodPreparer:
    """Writes a pod's volumes under the runner root and computes each container's process settings."""

    def __init__(
        self,
        core: client.CoreV1Api,
        root: Path,
        node_name: str,
        server: str,
        service_host: str,
        service_port: str,
    ) -> None:
        self.core = core
        self.root = root
        self.node_name = node_name
        self.server = server
        self.service_host = service_host
        self.service_port = service_port

    def _config_map(self, namespace: str):  # type: ignore[no-untyped-def]
        def get(name: str) -> dict[str, str] | None:
            try:
                obj = json.loads(
                    self.core.read_namespaced_config_map(name, namespace, _preload_content=False).data
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            data = dict(obj.get("data") or {})
            for key, value in (obj.get("binaryData") or {}).items():
                data[key] = base64.b64decode(value).decode("utf-8", "replace")
            return data

        return get

    def _secret(self, namespace: str):  # type: ignore[no-untyped-def]
        def get(name: str) -> dict[str, str] | None:
            try:
                obj = json.loads(
                    self.core.read_namespaced_secret(name, namespace, _preload_content=False).data
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return {
                k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()
            }

        return get

    def _write_items(self, folder: Path, data: dict[str, str], items: list[dict[str, Any]] | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            if key not in data:
                raise podspec.MissingReference(f'key "{key}" not found')
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[key])

    def volume_dirs(self, pod: dict[str, Any], pod_dir: Path, pod_ip: str) -> dict[str, Path]:
        """Materialize every volume of ``pod`` as a local folder; returns volume name -> folder."""
        meta, spec = pod["metadata"], pod["spec"]
        namespace = meta["namespace"]
        dirs: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            name, kind = volume["name"], podspec.volume_kind(volume)
            source = volume.get(kind) or {}
            folder = pod_dir / "volumes" / name
            if kind == "persistentVolumeClaim":
                folder = podspec.pvc_folder(self.root, namespace, source["claimName"])
                folder.mkdir(parents=True, exist_ok=True)
            elif kind == "hostPath":
                folder = Path(source["path"])
            elif kind == "configMap":
                data = self._config_map(namespace)(source["name"])
                if data is None and not source.get("optional"):
                    raise podspec.MissingReference(f'configmap "{source["name"]}" not found')
                self._write_items(folder, data or {}, source.get("items"))
            elif kind == "secret":
                data = self._secret(namespace)(source["secretName"])
                if data is None and not source.get("optional"):
                    raise podspec.MissingReference(f'secret "{source["secretName"]}" not found')
                self._write_items(folder, data or {}, source.get("items"))
            elif kind == "downwardAPI":
                self._write_downward(pod, folder, source.get("items") or [], pod_ip)
            elif kind == "projected":
                self._write_projected(pod, folder, source.get("sources") or [], pod_ip)
            else:
                if kind != "emptyDir":
                    log.warning(
                        "volume %s (%s) of %s/%s: unsupported here, using an empty folder",
                        name,
                        kind,
                        namespace,
                        meta["name"],
                    )
                folder.mkdir(parents=True, exist_ok=True)
            dirs[name] = folder
        return dirs

    def _write_downward(
        self, pod: dict[str, Any], folder: Path, items: list[dict[str, Any]], ip: str
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for item in items:
            if "fieldRef" in item:
                path = item["fieldRef"]["fieldPath"]
                meta = pod["metadata"]
                if path in ("metadata.labels", "metadata.annotations"):
                    values = meta.get(path.split(".")[1]) or {}
                    value = "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
                else:
                    value = podspec.field_ref(pod, path, ip, self.node_name)
            else:
                container = next(
                    (
                        c
                        for c in pod["spec"]["containers"]
                        if c["name"] == item["resourceFieldRef"].get("containerName")
                    ),
                    pod["spec"]["containers"][0],
                )
                value = podspec.resource_ref(container, item["resourceFieldRef"])
            target = folder / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(value)

    def _write_projected(
        self, pod: dict[str, Any], folder: Path, sources: list[dict[str, Any]], ip: str
    ) -> None:
        meta = pod["metadata"]
        folder.mkdir(parents=True, exist_ok=True)
        for source in sources:
            if "configMap" in source:
                ref = source["configMap"]
                data = self._config_map(meta["namespace"])(ref["name"])
                if data is None and not ref.get("optional"):
                    raise podspec.MissingReference(f'configmap "{ref["name"]}" not found')
                self._write_items(folder, data or {}, ref.get("items"))
            elif "secret" in source:
                ref = source["secret"]
                data = self._secret(meta["namespace"])(ref["name"])
                if data is None and not ref.get("optional"):
                    raise podspec.MissingReference(f'secret "{ref["name"]}" not found')
                self._write_items(folder, data or {}, ref.get("items"))
            elif "downwardAPI" in source:
                self._write_downward(pod, folder, source["downwardAPI"].get("items") or [], ip)
            elif "serviceAccountToken" in source:
                ref = source["serviceAccountToken"]
                (folder / ref["path"]).write_text(self._token(pod, ref))

    def _token(self, pod: dict[str, Any], ref: dict[str, Any]) -> str:
        meta = pod["metadata"]
        spec: dict[str, Any] = {
            "expirationSeconds": int(ref.get("expirationSeconds") or 3607),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]},
        }
        if ref.get("audience"):
            spec["audiences"] = [ref["audience"]]
        try:
            resp = self.core.create_namespaced_service_account_token(
                pod["spec"].get("serviceAccountName") or "default",
                meta["namespace"],
                {"spec": spec},
                _preload_content=False,
            )
            return str(json.loads(resp.data)["status"]["token"])
        except ApiException as exc:
            log.warning("token request for %s/%s failed: %s", meta["namespace"], meta["name"], exc.reason)
            return ""

    def container(
        self, pod: dict[str, Any], spec: dict[str, Any], pod_dir: Path, volume_dirs: dict[str, Path], ip: str
    ) -> PreparedContainer:
        """argv, environment, working directory and termination-message file of one container."""
        meta = pod["metadata"]
        cdir = pod_dir / "containers" / spec["name"]
        cdir.mkdir(parents=True, exist_ok=True)
        term_file = cdir / "termination-log"
        mounts = podspec.mount_map(spec, volume_dirs, term_file)
        for mount in spec.get("volumeMounts") or []:
            if mount.get("subPath") and mount["name"] in volume_dirs:  # the kubelet creates subPath dirs
                target = volume_dirs[mount["name"]] / mount["subPath"]
                if not target.exists():
                    target.mkdir(parents=True, exist_ok=True)
        # What the container itself defines; $(VAR) expansion and path substitution apply to this only,
        # never to the runner's own environment (its paths are local already).
        pod_env = podspec.container_env(
            pod,
            spec,
            base={
                "HOSTNAME": (pod.get("spec") or {}).get("hostname") or meta["name"],
                "KUBERNETES_SERVICE_HOST": self.service_host,
                "KUBERNETES_SERVICE_PORT": self.service_port,
            },
            config_map=self._config_map(meta["namespace"]),
            secret=self._secret(meta["namespace"]),
            pod_ip=ip,
            node_name=self.node_name,
        )
        argv = [
            mounts.substitute(podspec.expand_vars(a, pod_env))
            for a in (spec.get("command") or []) + (spec.get("args") or [])
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
        env["FINETUNE_LOCAL_ROOT"] = str(pod_dir)
        env["FINETUNE_LOCAL_MOUNTS"] = mounts.as_json()
        tmp = mounts.resolve("/tmp")
        if tmp:  # a volume mounted at /tmp: temp files go there, as they would in the container
            env["TMPDIR"] = tmp
        env.update({k: mounts.substitute(v) for k, v in pod_env.items()})
        if "KUBECONFIG" not in pod_env:
            kubeconfig = self._service_account_kubeconfig(mounts, cdir, meta["namespace"])
            if kubeconfig is not None:
                env["KUBECONFIG"] = str(kubeconfig)
        cwd = cdir / "workdir"
        if spec.get("workingDir"):
            wanted = mounts.substitute(spec["workingDir"])
            cwd = (
                Path(wanted)
                if wanted != spec["workingDir"] or Path(wanted).is_dir()
                else (pod_dir / "rootfs" / wanted.lstrip("/"))
            )
        cwd.mkdir(parents=True, exist_ok=True)
        return PreparedContainer(argv=argv, env=env, cwd=cwd, term_file=term_file)

    def _service_account_kubeconfig(
        self, mounts: podspec.MountMap, cdir: Path, namespace: str
    ) -> Path | None:
        """In-cluster config cannot work (its token path is fixed), so hand the process a kubeconfig that
        authenticates with the pod's own service-account token: RBAC applies to it as in a cluster."""
        folder = mounts.resolve(SERVICE_ACCOUNT_DIR)
        if folder is None or not (Path(folder) / "token").is_file():
            return None
        token = (Path(folder) / "token").read_text().strip()
        if not token:
            return None
        server = self.server
        cluster: dict[str, Any] = {"server": server}
        if (Path(folder) / "ca.crt").is_file():
            cluster["certificate-authority"] = str(Path(folder) / "ca.crt")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [
                {"name": "pod", "context": {"cluster": "local", "user": "pod", "namespace": namespace}}
            ],
            "current-context": "pod",
        }
        path = cdir / "kubeconfig"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path
