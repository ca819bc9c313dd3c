"""Developer tooling, not shipped in any image: generators (CRDs + API docs, dashboards, alert rules) and the
one-command demo. Each module runs as ``python -m finetune_tooling.<name>``."""
