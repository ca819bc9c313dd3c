"""A local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) and a pod runner.

Test and demo infrastructure, in no image: used by the integration/e2e tests (``pytest_plugin``) and the
one-command demo; see docs/localcluster.md.
"""
