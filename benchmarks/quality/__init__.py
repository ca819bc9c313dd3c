"""The LR-quality benchmark's parts, one module per question; ``benchmarks/lr_quality.py`` runs them."""
