"""Run under torchrun by test_training.py: two ranks train one model with in-batch negatives gathered across ranks."""

import json
import sys

import torch

from medcolbert.training.trainer import TrainConfig, Trainer

config = TrainConfig(**json.loads(sys.argv[1]))
trainer = Trainer(config, show_progress=False)
for _ in range(config.max_steps):
    metrics = trainer.train_step()
if trainer.rank == 0:
    trainer.model.save_pretrained(config.output_dir + "/weights")
print(f"rank {trainer.rank}/{trainer.world} loss {metrics['loss']:.6f}", flush=True)
torch.distributed.destroy_process_group()
