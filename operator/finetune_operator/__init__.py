"""finetune-operator: finds the learning rate, then fine-tunes with it."""
