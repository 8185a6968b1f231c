"""Run under torchrun by test_distributed.py: every rank builds its share of one index."""

import json
import sys

import torch

from medcolbert import ColBERT
from medcolbert.indexing.builder import build_index, init_distributed

checkpoint, corpus_file, out = sys.argv[1:4]
rank, world = init_distributed()
model = ColBERT.from_pretrained(checkpoint, device="cpu")
corpus = json.loads(open(corpus_file).read())
build_index(out, model, corpus, chunk_size=10, show_progress=False)
print(f"rank {rank}/{world} done", flush=True)
torch.distributed.destroy_process_group()
