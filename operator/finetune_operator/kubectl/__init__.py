"""`kubectl finetune`, the kubectl plugin (`kubectl-finetune` on PATH): LRSweeps and FineTuneJobs from the
terminal. Client-side only: it reads the API with the user's kubeconfig and never imports torch.

    cli.py        subcommands, flags (kubectl's -n/--context/--kubeconfig), exit codes
    errors.py     what can go wrong: an exit code each and a message naming the fix
    cluster.py    kubeconfig, context, namespace and the API reads
    resources.py  which resource a NAME means; its typed status (the operator's own models)
    table.py      the `get` and `compare` tables
    describe.py   `describe`: the page (header, a FineTuneJob's LR and batch size, conditions, Events)
    describe_sweep.py  an LRSweep's part: why this LR (plots, rules, trials ranked)
    textplot.py   loss vs LR as text
    plot.py       `plot`: the PNG, drawn by finetune_trainer.plot
    logs.py       `logs`: the trainer pod's output through the resource's Jobs
    waiting.py    `wait`: phase or condition, timeout
    style.py      numbers, ages, colour on a TTY
"""
