"""Where the control-plane binaries come from: ``KUBEBUILDER_ASSETS``, or a build from the Go module proxy.

Lookup order for each of ``etcd``, ``kube-apiserver``, ``kube-controller-manager``, ``kubectl`` and ``helm``:

1. ``$KUBEBUILDER_ASSETS/<name>`` when that variable is set (setup-envtest's layout; it ships etcd,
   kube-apiserver and kubectl only, so the other two fall through);
2. the versioned cache ``${FINETUNE_CACHE:-~/.cache/finetune-operator}/bin/k8s-v<K8S_VERSION>/<name>``.

Anything still missing is built into the cache (``ensure_binaries(build=True)``): Go is required for that.

Building Kubernetes from the module proxy needs a trick: ``k8s.io/kubernetes``'s go.mod replaces its
``k8s.io/*`` staging modules with ``./staging/...`` paths, which ``go install pkg@version`` refuses. So we
write a throw-away wrapper module that requires ``k8s.io/kubernetes vX`` and replaces every staging module
named in *that release's* go.mod with its published ``v0.<minor>.<patch>`` tag, then ``go build`` the
commands with the version ldflags Kubernetes' own build sets (otherwise ``/version`` says v0.0.0).
etcd and helm are built the same way (a wrapper module, no replaces needed). Each binary is written to a
temporary name and renamed into place, so an interrupted build never leaves a half-written cache entry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "1.37.2"
ETCD_VERSION = "3.7.3"  # the etcd client line Kubernetes 1.37 requires (go.etcd.io/etcd/client/v3 v3.7.x)
HELM_VERSION = "3.22.0"

VERSIONS_FILE = "VERSIONS.json"
GO_FALLBACKS = ("/usr/local/go/bin/go",)  # the official tarball's location, often not on PATH
NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")

_REPLACE_LINE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+(\S+))?\s+=>\s+(\S+)(?:\s+(\S+))?\s*$")


class BinariesError(RuntimeError):
    """A binary is missing and cannot be built; the message says what to install or set."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the five binaries the local cluster uses."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path

    def as_dict(self) -> dict[str, Path]:
        return {name: getattr(self, name.replace("-", "_")) for name in NAMES}


def cache_root() -> Path:
    """``$FINETUNE_CACHE``, else ``$XDG_CACHE_HOME/finetune-operator`` (``~/.cache/finetune-operator``)."""
    if os.environ.get("FINETUNE_CACHE"):
        return Path(os.environ["FINETUNE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "finetune-operator"


def cache_bin_dir(k8s_version: str = K8S_VERSION) -> Path:
    return cache_root() / "bin" / f"k8s-v{k8s_version}"


def _log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested)


def parse_local_replaces(gomod_text: str) -> list[str]:
    """Module paths that a go.mod replaces with a *local directory* (``=> ./x`` or ``=> ../x``).

    Handles both the single-line ``replace a => ./b`` form and ``replace ( ... )`` blocks; ignores
    comments and replaces that point at another module version.
    """
    modules: list[str] = []
    in_block = False
    for raw in gomod_text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if in_block:
            if line == ")":
                in_block = False
                continue
        elif line.startswith("replace"):
            rest = line[len("replace") :].strip()
            if rest == "(":
                in_block = True
                continue
            line = rest
        else:
            continue
        match = _REPLACE_LINE.match(line)
        if match and match.group(3).startswith(("./", "../")):
            modules.append(match.group(1))
    return modules


def staging_version(k8s_version: str) -> str:
    """``1.37.2`` -> ``v0.37.2``: the tag the staging repositories (k8s.io/api, ...) publish."""
    major, minor, patch = k8s_version.lstrip("v").split(".")[:3]
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {k8s_version!r}")
    return f"v0.{minor}.{patch}"


def wrapper_gomod(requires: Mapping[str, str], replaces: Mapping[str, str], go_version: str = "1.26") -> str:
    """The go.mod text of a throw-away wrapper module."""
    lines = ["module finetune.dev/localcluster/buildwrapper", "", f"go {go_version}", "", "require ("]
    lines += [f"\t{mod} {ver}" for mod, ver in sorted(requires.items())]
    lines.append(")")
    if replaces:
        lines += ["", "replace ("]
        lines += [f"\t{mod} => {mod} {ver}" for mod, ver in sorted(replaces.items())]
        lines.append(")")
    return "\n".join(lines) + "\n"


def kubernetes_ldflags(k8s_version: str, git_commit: str = "", build_date: str = "") -> str:
    """The ``-X`` flags Kubernetes' hack/lib/version.sh sets, for component-base and client-go."""
    version = "v" + k8s_version.lstrip("v")
    major, minor = version[1:].split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitCommit": git_commit,
        "gitTreeState": "clean",
        "buildDate": build_date or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def helm_ldflags(helm_version: str, k8s_version: str) -> str:
    """Helm's version, and its default Kubernetes version for ``helm template``/lint ``.Capabilities``."""
    major, minor = k8s_version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version=v{helm_version.lstrip('v')}"]
    for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags += [f"-X {pkg}.k8sVersionMajor={major}", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


# ---------------------------------------------------------------------------------------------------
# Lookup


def _candidates(name: str, k8s_version: str) -> Iterable[Path]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        yield Path(assets).expanduser() / name
    yield cache_bin_dir(k8s_version) / name


def wanted_version(
    name: str,
    k8s_version: str = K8S_VERSION,
    etcd_version: str = ETCD_VERSION,
    helm_version: str = HELM_VERSION,
) -> str:
    return {"etcd": etcd_version, "helm": helm_version}.get(name, k8s_version)


def _stamps(directory: Path) -> dict[str, str]:
    try:
        data = json.loads((directory / VERSIONS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_version(directory: Path, name: str, version: str) -> None:
    """Note which version a cached binary was built at (a version bump then rebuilds just that one)."""
    stamps = _stamps(directory)
    stamps[name] = version
    tmp = directory / f".{VERSIONS_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(stamps, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / VERSIONS_FILE)


def find_binary(name: str, k8s_version: str = K8S_VERSION) -> Path | None:
    cache = cache_bin_dir(k8s_version)
    for path in _candidates(name, k8s_version):
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        if path.parent == cache and _stamps(cache).get(
            name, wanted_version(name, k8s_version)
        ) != wanted_version(name, k8s_version):
            continue  # built at another etcd/helm version than this code wants
        return path.resolve()
    return None


def find_binaries(k8s_version: str = K8S_VERSION) -> tuple[dict[str, Path], list[str]]:
    """(found name -> path, missing names)."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in NAMES:
        path = find_binary(name, k8s_version)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    return found, missing


def ensure_binaries(build: bool = True, k8s_version: str = K8S_VERSION) -> Binaries:
    """Return all five binaries, building the missing ones into the cache when ``build`` is true."""
    found, missing = find_binaries(k8s_version)
    if missing:
        if not build:
            raise BinariesError(
                f"missing {', '.join(missing)}: run `finetune-localcluster install` (needs Go) "
                "or set KUBEBUILDER_ASSETS to a directory holding them"
            )
        Builder(k8s_version=k8s_version).build(missing)
        found, missing = find_binaries(k8s_version)
        if missing:  # pragma: no cover - build() raises before this
            raise BinariesError(f"build finished but {', '.join(missing)} still missing")
    return Binaries(**{name.replace("-", "_"): found[name] for name in NAMES})


def binary_version(name: str, path: Path) -> str:
    """One line saying which version a binary reports (best effort)."""
    args = {
        "etcd": ["--version"],
        "kube-apiserver": ["--version"],
        "kube-controller-manager": ["--version"],
        "kubectl": ["version", "--client"],
        "helm": ["version", "--short"],
    }[name]
    try:
        out = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unrunnable: {exc}"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


# ---------------------------------------------------------------------------------------------------
# Build


def find_go() -> Path:
    for candidate in (os.environ.get("GO"), shutil.which("go"), *GO_FALLBACKS):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise BinariesError(
        "cannot build the control-plane binaries: no Go toolchain found "
        "(looked at $GO, PATH, /usr/local/go). "
        "Install Go >= 1.26 (https://go.dev/dl/, or `apt-get install golang-go` if new enough), "
        "or set KUBEBUILDER_ASSETS to a directory with etcd, kube-apiserver, kube-controller-manager, "
        "kubectl and helm."
    )


@dataclass
class Builder:
    """Builds missing binaries into ``cache_bin_dir(k8s_version)``; progress goes to stderr."""

    k8s_version: str = K8S_VERSION
    etcd_version: str = ETCD_VERSION
    helm_version: str = HELM_VERSION
    log: Callable[[str], None] = _log

    def __post_init__(self) -> None:
        self.go = find_go()
        self.dest = cache_bin_dir(self.k8s_version)

    # -- go plumbing ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-buildvcs=false -mod=mod")
        env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
        env["PATH"] = f"{self.go.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _go(self, args: list[str], cwd: Path, what: str) -> str:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(self.go), *args],
            cwd=cwd,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        assert proc.stdout is not None
        last_note = started
        for line in proc.stdout:
            lines.append(line.rstrip())
            if time.monotonic() - last_note > 60:
                last_note = time.monotonic()
                self.log(f"  ... still {what} ({last_note - started:.0f}s)")
        rc = proc.wait()
        output = "\n".join(lines)
        if rc != 0:
            hint = ""
            if re.search(r"dial tcp|no such host|proxy\.golang\.org|i/o timeout|connection refused", output):
                hint = "\n(network problem reaching the Go module proxy? check GOPROXY and connectivity)"
            elif re.search(r"requires go >= ?[0-9.]+|go: updates to go\.mod needed|toolchain", output):
                hint = (
                    f"\n(this Go is too old for these releases: install a newer Go, or set "
                    f"KUBEBUILDER_ASSETS to prebuilt binaries; wanted Kubernetes {self.k8s_version})"
                )
            tail = "\n".join(lines[-40:])
            raise BinariesError(f"`go {' '.join(args[:2])}` failed while {what} (exit {rc}):\n{tail}{hint}")
        return output

    def _module_info(self, module: str, version: str, cwd: Path) -> dict[str, str]:
        out = self._go(["mod", "download", "-json", f"{module}@{version}"], cwd, f"downloading {module}")
        return json.loads(out[out.index("{") :])

    def _wrapper(
        self, workdir: Path, requires: dict[str, str], replaces: dict[str, str], imports: list[str]
    ) -> Path:
        mod_dir = workdir / "wrapper"
        mod_dir.mkdir(parents=True, exist_ok=True)
        go_minor = ".".join(self._go(["env", "GOVERSION"], workdir, "checking Go").strip()[2:].split(".")[:2])
        (mod_dir / "go.mod").write_text(wrapper_gomod(requires, replaces, go_minor))
        # A blank-import file keeps `go mod tidy` from dropping the requirements.
        body = "\n".join(f'\t_ "{imp}"' for imp in imports)
        (mod_dir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{body}\n)\n")
        return mod_dir

    def _build_one(
        self, mod_dir: Path, package: str, name: str, ldflags: str, version: str | None = None
    ) -> None:
        """Build `package` to `self.dest/name` (atomically) and stamp it with `version` (default: the
        version `wanted_version` gives the name)."""
        self.dest.mkdir(parents=True, exist_ok=True)
        tmp = self.dest / f".{name}.tmp-{os.getpid()}"
        started = time.monotonic()
        self.log(f"building {name} from {package} ...")
        try:
            self._go(
                ["build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package],
                mod_dir,
                f"building {name}",
            )
            os.replace(tmp, self.dest / name)
            record_version(
                self.dest,
                name,
                version or wanted_version(name, self.k8s_version, self.etcd_version, self.helm_version),
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.log(f"built {name} in {time.monotonic() - started:.0f}s -> {self.dest / name}")

    # -- per project ------------------------------------------------------------------------------

    def build_kubernetes(self, names: list[str], workdir: Path) -> None:
        version = "v" + self.k8s_version.lstrip("v")
        info = self._module_info("k8s.io/kubernetes", version, workdir)
        gomod = Path(info["GoMod"]).read_text()
        staging = [m for m in parse_local_replaces(gomod) if m.startswith("k8s.io/")]
        if not staging:
            raise BinariesError(
                f"k8s.io/kubernetes {version} go.mod lists no staging replaces; layout changed?"
            )
        self.log(
            f"k8s.io/kubernetes {version}: replacing {len(staging)} staging modules with "
            f"{staging_version(self.k8s_version)}"
        )
        pinned = {m: staging_version(self.k8s_version) for m in staging}
        packages = [f"k8s.io/kubernetes/cmd/{n}" for n in names]
        mod_dir = self._wrapper(workdir, {"k8s.io/kubernetes": version, **pinned}, pinned, packages)
        self.log("resolving the Kubernetes module graph (downloads a few hundred MB the first time) ...")
        self._go(["mod", "tidy", "-e"], mod_dir, "resolving Kubernetes dependencies")
        ldflags = kubernetes_ldflags(self.k8s_version, git_commit=info.get("Sum", ""))
        for name in names:
            self._build_one(mod_dir, f"k8s.io/kubernetes/cmd/{name}", name, ldflags)

    def build_etcd(self, workdir: Path) -> None:
        version = "v" + self.etcd_version.lstrip("v")
        mod_dir = self._wrapper(
            workdir, {"go.etcd.io/etcd/server/v3": version}, {}, ["go.etcd.io/etcd/server/v3"]
        )
        self._go(["mod", "tidy", "-e"], mod_dir, "resolving etcd dependencies")
        ldflags = f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v{self.etcd_version}"
        self._build_one(mod_dir, "go.etcd.io/etcd/server/v3", "etcd", ldflags)

    def build_helm(self, workdir: Path) -> None:
        version = "v" + self.helm_version.lstrip("v")
        mod_dir = self._wrapper(workdir, {"helm.sh/helm/v3": version}, {}, ["helm.sh/helm/v3/cmd/helm"])
        self._go(["mod", "tidy", "-e"], mod_dir, "resolving helm dependencies")
        self._build_one(
            mod_dir, "helm.sh/helm/v3/cmd/helm", "helm", helm_ldflags(self.helm_version, self.k8s_version)
        )

    def build(self, names: Iterable[str]) -> None:
        wanted = [n for n in NAMES if n in set(names)]
        started = time.monotonic()
        self.log(
            f"building {', '.join(wanted)} into {self.dest} with {self.go} "
            f"(first time only; expect 15-40 minutes on 2 cores)"
        )
        with tempfile.TemporaryDirectory(prefix="finetune-gobuild-") as tmp:
            work = Path(tmp)
            if "etcd" in wanted:
                (work / "etcd").mkdir()
                self.build_etcd(work / "etcd")
            if "helm" in wanted:
                (work / "helm").mkdir()
                self.build_helm(work / "helm")
            k8s = [n for n in wanted if n in KUBERNETES_COMMANDS]
            if k8s:
                (work / "k8s").mkdir()
                self.build_kubernetes(k8s, work / "k8s")
        self.log(f"build finished in {time.monotonic() - started:.0f}s")
