"""A local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) and a pod runner.

Used by the integration/e2e tests and the one-command demo; see docs/localcluster.md.
"""
