"""``python -m finetune_trainer …`` — the same program as the ``finetune-trainer`` console script."""

from finetune_trainer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
