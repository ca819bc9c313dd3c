"""The trainer program: LR range tests, sweeps and warmup/decay fine-tunes."""
