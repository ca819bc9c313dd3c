"""The local cluster's Kueue: where the build is cached, when it counts as present, and the config it runs
with (no webhooks called, batch/Job only, queue-name label required)."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_localcluster import kueue
from finetune_localcluster.binaries import BinariesError, record_version


def _fake_build(root: Path, version: str = kueue.KUEUE_VERSION, crds: bool = True) -> Path:
    directory = kueue.kueue_dir(version)
    (directory / kueue.CRDS).mkdir(parents=True)
    manager = directory / kueue.MANAGER
    manager.write_text("#!/bin/sh\n")
    manager.chmod(0o755)
    record_version(directory, kueue.MANAGER, version)
    if crds:
        (directory / kueue.CRDS / "kueue.x-k8s.io_workloads.yaml").write_text(
            "kind: CustomResourceDefinition\n"
        )
        record_version(directory, kueue.CRDS, version)
    return directory


def test_cache_is_versioned_under_the_finetune_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    assert kueue.kueue_dir("0.17.0") == tmp_path / "bin" / "kueue-v0.17.0"


def test_a_complete_stamped_build_is_found(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    directory = _fake_build(tmp_path)
    found = kueue.find_kueue()
    assert found is not None and found.manager == (directory / kueue.MANAGER).resolve()
    assert [p.name for p in found.crd_paths()] == ["kueue.x-k8s.io_workloads.yaml"]
    assert kueue.ensure_kueue(build=False) == found  # a second install is a no-op


def test_missing_crds_or_another_version_is_not_found(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    _fake_build(tmp_path, crds=False)
    assert kueue.find_kueue() is None
    record_version(kueue.kueue_dir(), kueue.MANAGER, "0.16.0")
    assert kueue.find_kueue() is None
    with pytest.raises(BinariesError, match="finetune-localcluster install"):
        kueue.ensure_kueue(build=False)


def test_manager_config_runs_without_webhooks_for_labelled_jobs_only(tmp_path):
    config = kueue.manager_config(probe_port=1234, webhook_port=5678, cert_dir=tmp_path)
    assert config["kind"] == "Configuration" and config["apiVersion"].startswith("config.kueue.x-k8s.io/")
    assert config["integrations"]["frameworks"] == ["batch/job"]
    assert config["manageJobsWithoutQueueName"] is False
    assert config["internalCertManagement"] == {"enable": False}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:1234"
    assert config["webhook"]["certDir"] == str(tmp_path)


def test_version_ldflags_name_the_release():
    assert "sigs.k8s.io/kueue/pkg/version.GitVersion=v0.17.0" in kueue.kueue_ldflags("0.17.0")
